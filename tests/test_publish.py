"""`bench publish`: long-format leaderboard rows with provenance, deduplicated, escaped, lock-safe."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pandas as pd
import pytest

from benchsuite.cli import main
from benchsuite.core.checkpoint import save_json
from benchsuite.reporting.publish import COLUMNS, escape_cell, publish
from benchsuite.reporting.results import save_results

PROVENANCE = {"suite_version": "0.2.0", "git_commit": "abc123", "torch_version": "2.x", "hardware": "CPU test",
              "date": "2026-11-23T00:00:00+00:00"}


def fake_run(run_dir: Path, seeds: list[int], defense: str = "poisoncam", epochs: int = 15) -> Path:
    """A finished run's files, written by hand: two defenses per seed, one of them a filter."""
    rows = []
    for seed in seeds:
        base = {"dataset": "synthetic", "preset": "smoke", "attack": "htba", "targets": "0", "target": 0,
                "rate": 1.0, "seed": seed, "ssl": "simclr", "backbone": "resnet18", "epochs": epochs}
        rows.append({**base, "defense": "none", "clean_acc": 95.0 + seed, "patched_asr": 80.0 - seed})
        rows.append({**base, "defense": defense, "clean_acc": 93.0, "patched_asr": 3.0 + seed,
                     "removed": 888, "recall": 95.8, "precision": 53.9, "top20_acc": 20.0})
    run_dir.mkdir(parents=True)
    save_results(run_dir, rows)
    config = {"preset": "smoke", "dataset": {"name": "synthetic"}, "train": {"epochs": epochs},
              "grid": {"seeds": seeds, "reference": True}}
    save_json(run_dir / "config.json", {"version": "0.2.0", "config": config})
    save_json(run_dir / "provenance.json", PROVENANCE)
    return run_dir


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_publish_writes_long_rows_with_provenance(tmp_path):
    run = fake_run(tmp_path / "run", seeds=[0, 1])
    added = publish(run, tmp_path / "lb")
    path = tmp_path / "lb" / "synthetic__htba.csv"
    assert added == {path: 6}  # per seed: none (probe), poisoncam (probe + detection)
    board = read(path)
    assert list(board.columns) == COLUMNS
    assert set(board["metric_set"]) == {"probe", "detection"}
    assert (board["git_commit"] == "abc123").all() and (board["hardware"] == "CPU test").all()
    detection = board[board["metric_set"] == "detection"]
    assert list(detection["recall"]) == ["95.8", "95.8"] and (detection["clean_acc"] == "").all()


def test_publishing_twice_adds_nothing_and_a_new_recipe_adds_rows(tmp_path):
    run = fake_run(tmp_path / "run", seeds=[0])
    lb = tmp_path / "lb"
    publish(run, lb)
    assert publish(run, lb) == {lb / "synthetic__htba.csv": 0}
    other = fake_run(tmp_path / "longer", seeds=[0], epochs=30)  # another recipe: another config hash
    assert publish(other, lb) == {lb / "synthetic__htba.csv": 3}
    assert read(lb / "synthetic__htba.csv")["config_hash"].nunique() == 2


def test_formula_cells_are_escaped_but_numbers_stay_numbers(tmp_path):
    assert escape_cell("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert escape_cell("@SUM(A1)") == "'@SUM(A1)" and escape_cell("+cmd") == "'+cmd"
    assert escape_cell("-12.5") == "-12.5" and escape_cell("-inf") == "-inf" and escape_cell(3.0) == 3.0
    run = fake_run(tmp_path / "run", seeds=[0], defense="=evil()")
    lb = tmp_path / "lb"
    publish(run, lb)
    text = (lb / "synthetic__htba.csv").read_text()
    assert "'=evil()" in text and ",=evil()" not in text
    assert publish(run, lb) == {lb / "synthetic__htba.csv": 0}  # escaped rows still deduplicate


def _publish_in_process(run: str, lb: str) -> None:
    publish(Path(run), Path(lb))


def test_parallel_publishes_to_one_leaderboard_keep_every_row(tmp_path):
    runs = [fake_run(tmp_path / f"run{i}", seeds=[i], epochs=10 + i) for i in range(6)]
    lb = tmp_path / "lb"
    context = mp.get_context("spawn")
    procs = [context.Process(target=_publish_in_process, args=(str(r), str(lb))) for r in runs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    board = read(lb / "synthetic__htba.csv")
    assert len(board) == 6 * 3 and board["config_hash"].nunique() == 6


def test_cli_publish_and_bad_run_dir(tmp_path, capsys):
    run = fake_run(tmp_path / "run", seeds=[0])
    assert main(["publish", str(run), "--leaderboards", str(tmp_path / "lb")]) == 0
    assert (tmp_path / "lb" / "synthetic__htba.csv").is_file()
    assert main(["publish", str(tmp_path / "nowhere"), "--leaderboards", str(tmp_path / "lb")]) == 2
    assert "pass a run directory" in capsys.readouterr().err


def test_report_is_one_self_contained_page(tmp_path):
    run = fake_run(tmp_path / "run", seeds=[0, 1])
    figure = run / "figures" / "htba_t0_r1_s0"
    figure.mkdir(parents=True)
    from benchsuite.reporting.report import asr_summary

    asr_summary(pd.read_csv(run / "results.csv"), figure / "poisoncam_patches.png")  # any real PNG
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert page.count("<table") >= 3  # provenance, Table 1 and the detection tables
    assert "PoisonCAM" in page and "±" in page
    assert page.count('src="data:image/png;base64,') == 2  # the ASR summary and the cell's figure
    assert "retrieved candidate trigger patches" in page
    assert json.loads((run / "provenance.json").read_text())["git_commit"] in page


@pytest.mark.parametrize("layout", ["poisoncam-t1", "poisoncam-t2", "patchsearch-t1", "patchsearch-t2", "detection"])
@pytest.mark.parametrize("fmt", ["rich", "markdown", "latex", "csv"])
def test_every_layout_prints_in_every_format(tmp_path, capsys, layout, fmt):
    run = fake_run(tmp_path / "run", seeds=[0, 1])
    assert main(["table", str(run), "--layout", layout, "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert ("PoisonCAM" in out) or ("Backdoored" in out)
    if fmt == "latex":
        assert "\\begin{tabular}" in out
