"""Progress shows in logs: plain lines when stderr is not a terminal, and in the run's log file."""

from __future__ import annotations

import os
import subprocess
import sys

from benchsuite.core.console import PlainProgress
from tests.conftest import TINY_OVERRIDES


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines_over(total: int, seconds_per_step: float) -> list[str]:
    clock = FakeClock()
    plain = PlainProgress("pretrain", total, clock=clock)
    lines = []
    for _ in range(total):
        clock.now += seconds_per_step
        line = plain.advance(1, info="loss 1.0")
        if line is not None:
            lines.append(line)
    return lines


def test_a_line_each_ten_percent_when_steps_are_slow():
    lines = _lines_over(100, seconds_per_step=10.0)
    assert len(lines) == 10  # 10 %, 20 %, ... 100 %
    assert lines[0].startswith("pretrain: 10/100 (10%)")
    assert "ETA 15m00s" in lines[0] and "10 s/it" in lines[0] and "loss 1.0" in lines[0]
    assert lines[-1].startswith("pretrain: 100/100 (100%)") and "ETA" not in lines[-1]


def test_at_most_one_line_every_30_seconds_and_always_the_last():
    lines = _lines_over(100, seconds_per_step=0.5)  # 10 % = 5 s: lines only every 30 s
    times = [float(line.split("(")[1].split("%")[0]) for line in lines]
    assert times == [10, 70, 100]


def test_resumed_progress_counts_from_the_start_point():
    clock = FakeClock()
    plain = PlainProgress("pretrain", 10, start=5, clock=clock)
    clock.now = 40.0
    line = plain.advance(1)
    assert line is not None and line.startswith("pretrain: 6/10 (60%)") and "ETA 2m40s" in line


def test_a_run_logged_to_a_file_shows_progress_lines(tmp_path):
    """As under SLURM or nohup: stdout and stderr go to a file, which must show where the run is."""
    args = [sys.executable, "-m", "benchsuite.cli", "run", "--attack", "htba", "--defense", "none",
            "--no-reference", "--out", str(tmp_path / "runs")]
    for item in TINY_OVERRIDES:
        args += ["--set", item.replace("train.epochs=1", "train.epochs=2")]
    log = tmp_path / "slurm.out"
    with open(log, "w") as handle:
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a log file: rich's 80 columns
        done = subprocess.run(args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    text = log.read_text()
    assert done.returncode == 0, text
    finished = [line for line in text.splitlines() if "pretrain" in line and "2/2 (100%)" in line]
    assert finished and all("elapsed" in line and "loss" in line for line in finished), text  # one line each
    run_log = next((tmp_path / "runs").glob("*/run.log")).read_text()
    assert "2/2 (100%)" in run_log and "run directory:" in run_log


def test_planned_search_iterations_match_the_search_rule():
    from benchsuite.poison_search.search import SearchConfig, planned_iterations, survivors

    cfg = SearchConfig(samples_per_iteration=2, prune_fraction=0.25, cluster_score="max", flip_score="into",
                       flip_set_size=10, prune_at_least_one=True)
    n, steps = 40, 0
    while n:
        n, steps = survivors(n, cfg), steps + 1
    assert planned_iterations(40, cfg) == steps > 1


def test_plain_lines_are_never_wrapped_at_the_log_width(monkeypatch):
    import io

    from rich.console import Console

    from benchsuite.core import console as console_module

    sink = io.StringIO()
    monkeypatch.setattr(console_module, "console", Console(file=sink, width=40, force_terminal=False))
    with console_module.progress_bar("a long stage description that passes forty columns", total=2) as advance:
        advance(1, info="loss 1.234")
        advance(1, info="loss 1.000")
    lines = sink.getvalue().splitlines()
    assert any("2/2 (100%)" in line and "loss 1.000" in line for line in lines), lines
