"""The grid at scale: kill -9 and resume, executors, dry run, determinism across runs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchsuite.reporting.results import TIMING_COLUMNS
from tests.conftest import TINY_OVERRIDES

# two cells (seeds 0 and 1) and the clean reference: four encoders of three epochs each
GRID = ["run", "--attack", "htba", "--defense", "none", "--targets", "0", "--seeds", "0,1", "--epochs", "3"]
for item in TINY_OVERRIDES:
    if not item.startswith("train.epochs"):
        GRID += ["--set", item]


# rich wraps its log lines at the console width. Every run here uses the threads per process that the
# 2-worker executor gives its workers: CPU kernels sum in another order with another thread count.
ENV = {**os.environ, "COLUMNS": "500", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchsuite.cli", *args]


def run_grid(out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(bench(*GRID, "--out", str(out), *extra), capture_output=True, text=True, timeout=600,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def results(out: Path) -> pd.DataFrame:
    """The results without the measured cost columns (wall time and memory differ between runs)."""
    (csv,) = out.glob("*/results.csv")
    return pd.read_csv(csv).drop(columns=TIMING_COLUMNS, errors="ignore")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """An uninterrupted run of the grid: its results and its output folder."""
    out = tmp_path_factory.mktemp("reference")
    run_grid(out)
    return results(out), out


def _done(out: Path) -> int:
    """How many stages are finished (have their DONE marker)."""
    return len(list(out.glob("cache/*/*/DONE")))


def _pretraining_checkpoint(out: Path) -> bool:
    """True once some encoder has a checkpoint but is not finished: the process is mid-pretraining."""
    return any(not (state.parent / "DONE").exists() for state in out.glob("cache/pretrain/*/trainer_state.pt"))


def _kill_when(out: Path, ready, timeout: float = 300, jitter: float = 0.0) -> bool:
    """Run the grid and SIGKILL it once ``ready()`` (then up to ``jitter`` s later).

    True when the kill landed mid-run: ``ready()`` held and the process died of the signal, not of its end.
    """
    proc = subprocess.Popen(bench(*GRID, "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        landed = proc.poll() is None and ready()
        time.sleep(jitter)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return landed and proc.returncode == -signal.SIGKILL


def test_kill_9_at_any_moment_then_rerun_recomputes_nothing_finished_and_gives_the_same_table(tmp_path, reference):
    expected, reference_out = reference
    total = _done(reference_out)
    out = tmp_path / "runs"
    # first kill: in the middle of pretraining (a checkpoint exists, the encoder is not done)
    assert _kill_when(out, lambda: _pretraining_checkpoint(out)), "the first kill did not land mid-run"
    assert _pretraining_checkpoint(out), "the first kill was meant to land mid-pretraining"
    # then kills at random moments (seeded), each once the rerun has finished a random number of further
    # stages, with many still to go: the moment is random, and always mid-run
    rng = random.Random(0)
    for i in range(3):
        before = _done(out)
        assert total - before >= 8, f"too few stages left for kill {i + 2}"
        n = rng.randint(1, (total - before) // 4)
        landed = _kill_when(out, lambda n=n, before=before: _done(out) >= before + n, jitter=rng.uniform(0, 0.2))
        assert landed, f"kill {i + 2} (after {n} more stages) did not land mid-run"
    assert _done(out) < total
    finished = {p: p.stat().st_mtime_ns for p in out.glob("cache/*/*/DONE")}
    run_grid(out)
    recomputed = [str(p) for p, mtime in finished.items() if p.stat().st_mtime_ns != mtime]
    assert not recomputed, f"finished stages were recomputed: {recomputed}"
    pd.testing.assert_frame_equal(results(out), expected)


def test_resume_continues_pretraining_from_its_checkpoint(tmp_path, reference):
    expected, _ = reference
    out = tmp_path / "runs"
    assert _kill_when(out, lambda: _pretraining_checkpoint(out))
    assert _pretraining_checkpoint(out)
    final = run_grid(out)
    assert "resuming from the last checkpoint" in final.stderr
    pd.testing.assert_frame_equal(results(out), expected)


@pytest.mark.parametrize("executor", [["--workers", "2"], ["--executor", "submitit", "--cluster", "local"]],
                         ids=["local-2-workers", "submitit-local"])
def test_parallel_executors_give_the_sequential_results(tmp_path, reference, executor):
    """A second run of the same seeds from scratch, in parallel, gives the sequential run's results and tables
    (so it also shows the same seed twice gives identical tables)."""
    expected, reference_out = reference
    run_grid(tmp_path / "runs", *executor)
    pd.testing.assert_frame_equal(results(tmp_path / "runs"), expected)
    table = [subprocess.run(bench("table", str(next(p.glob("*/results.csv")).parent), "--format", "csv"),
                            capture_output=True, text=True, check=True).stdout
             for p in (reference_out, tmp_path / "runs")]
    assert table[0] == table[1] and "± " in table[0] and "(n=2)" in table[0]  # two seeds: mean ± s (n=2)


def test_dry_run_lists_cells_and_their_cached_stages(tmp_path, reference):
    out = tmp_path / "runs"
    before = subprocess.run(bench(*GRID, "--out", str(out), "--dry-run"), capture_output=True, text=True,
                            check=True, env=ENV)
    assert before.stderr.count("to do") >= 4 and "cached" not in before.stderr
    assert "s=0" in before.stderr and "s=1" in before.stderr
    assert not list(out.glob("cache/pretrain/*/DONE")), "a dry run trained something"
    _, out = reference  # the same grid, run to the end
    after = subprocess.run(bench(*GRID, "--out", str(out), "--dry-run"), capture_output=True, text=True,
                           check=True, env=ENV)
    assert "to do" not in after.stderr and after.stderr.count("cached") >= 4
