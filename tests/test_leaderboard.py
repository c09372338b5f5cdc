"""`bench leaderboard` (issue #26): the published CSVs as one static page and as one tidy CSV per metric set."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from benchsuite.cli import main
from benchsuite.reporting.leaderboard import (
    TIDY_FOLDER,
    mean_std,
    page_html,
    read_leaderboards,
    summarise,
    tidy_tables,
)
from benchsuite.reporting.publish import COLUMNS, publish
from tests.test_publish import fake_run

REPO = Path(__file__).resolve().parents[1]


def _published(tmp_path: Path, seeds: list[int]) -> Path:
    lb = tmp_path / "lb"
    publish(fake_run(tmp_path / "run", seeds=seeds), lb)
    return lb


def test_mean_and_sample_std_over_seeds_with_n(tmp_path):
    rows = read_leaderboards(_published(tmp_path, [0, 1, 2]))
    probe = summarise(rows[(rows.metric_set == "probe") & (rows.defense == "none")], "probe")
    assert len(probe) == 1  # three seeds, one row
    assert probe.loc[0, "clean_acc"] == "96.0 ± 1.0 (n=3)"  # 95, 96, 97: ddof 1
    assert probe.loc[0, "seeds"] == "0,1,2"
    assert mean_std(pd.Series([1.0, float("nan")])) == (1.0, pytest.approx(float("nan"), nan_ok=True), 1)


def test_a_table_keeps_only_the_columns_its_metric_set_fills(tmp_path):
    rows = read_leaderboards(_published(tmp_path, [0, 1]))
    detection = summarise(rows[rows.metric_set == "detection"], "detection")
    assert {"removed", "recall", "precision", "top20_acc"} <= set(detection.columns)
    assert "iou" not in detection.columns and "clean_acc" not in detection.columns  # empty / another set
    page = page_html(rows)
    assert page.count('<table class="leaderboard') == 2  # probe and detection of synthetic x htba
    assert "<script" in page and "http" not in page.split("<script>")[1]  # inline, nothing fetched


def test_class_indices_are_shown_as_values_not_averaged(tmp_path):
    lb = _published(tmp_path, [0, 1])
    path = lb / "synthetic__htba.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    verdict = frame[frame.metric_set == "probe"].head(2).copy()
    verdict["metric_set"], verdict["defense"], verdict["flagged_label"] = "encoder_verdict", "sslcleanse", ["3", "5"]
    verdict["trojaned"], verdict["seed"] = ["True", "False"], ["0", "1"]
    pd.concat([frame, verdict]).to_csv(path, index=False)
    rows = read_leaderboards(lb)
    table = summarise(rows[rows.metric_set == "encoder_verdict"], "encoder_verdict")
    assert table.loc[0, "flagged_label"] == "3 / 5"  # classes, not a mean of 4
    assert table.loc[0, "trojaned"] == "0.5 ± 0.7 (n=2)"  # the share of seeds judged trojaned


def test_older_protocol_rows_are_shown_apart(tmp_path):
    lb = _published(tmp_path, [0])
    path = lb / "synthetic__htba.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    old = frame[frame.metric_set == "probe"].copy()
    old["suite_version"], old["config_hash"] = "0.0.1", "oldrecipe"
    pd.concat([frame, old]).to_csv(path, index=False)
    page = page_html(read_leaderboards(lb))
    current, older = page.split("of an older protocol version", 1)
    assert "oldrecipe" not in current and "oldrecipe" in older
    # a file written before a metric set's column existed: its rows of that set are older too
    frame.drop(columns=["patched_confusion"]).to_csv(path, index=False)
    rows = read_leaderboards(lb)
    assert set(rows.loc[rows.metric_set == "probe", "missing_columns"]) == {"patched_confusion"}
    assert "No row of the current protocol yet" in page_html(rows)


def test_bench_leaderboard_writes_the_page_and_tidy_csvs(tmp_path):
    lb = _published(tmp_path, [0, 1])
    assert main(["leaderboard", "--leaderboards", str(lb), "--output", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert "95.5 ± 0.7 (n=2)" in page and "abc123" in page  # the mean, and the row's provenance
    tidy = pd.read_csv(lb / TIDY_FOLDER / "synthetic__htba__detection.csv")
    assert "recall" in tidy.columns and "clean_acc" not in tidy.columns and set(tidy.protocol) == {"current"}
    assert len(tidy) == 2


@pytest.mark.parametrize("case, message", [
    ("missing", "not found: pass --leaderboards"),
    ("file", "is a file: pass --leaderboards DIR"),
    ("empty", "holds no <dataset>__<attack>.csv: publish a run first"),
    ("text", "line 2: recall = 'lots' is not a number: correct or delete that row"),
    ("confusion", "line 2: patched_confusion = '[1, 2' is not a JSON list of numbers: correct or delete that row"),
])
def test_bad_leaderboards_are_one_error_line(tmp_path, capsys, case, message):
    lb = tmp_path / "lb"
    if case == "empty":
        lb.mkdir()
    if case == "file":
        lb.write_text("not a folder")
    if case in ("text", "confusion"):
        bad = {"recall": "lots"} if case == "text" else {"patched_confusion": "[1, 2"}
        pd.DataFrame([{**dict.fromkeys(COLUMNS, ""), "dataset": "synthetic", "attack": "htba", "seed": "0",
                       "defense": "poisoncam", "metric_set": "detection" if case == "text" else "probe", **bad,
                       "suite_version": "0.1.0"}]).to_csv(tmp_path / "x.csv", index=False)
        lb.mkdir()
        (tmp_path / "x.csv").rename(lb / "synthetic__htba.csv")
    assert main(["leaderboard", "--leaderboards", str(lb), "--output", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_path / "site").exists()


def test_an_output_that_cannot_be_written_is_one_error_line(tmp_path, capsys):
    lb = _published(tmp_path, [0])
    (tmp_path / "site").write_text("a file")
    assert main(["leaderboard", "--leaderboards", str(lb), "--output", str(tmp_path / "site")]) == 2
    assert "is a file: pass a folder" in capsys.readouterr().err
    assert main(["leaderboard", "--leaderboards", str(lb), "--output", str(tmp_path / "site" / "sub")]) == 2
    assert "cannot create --output" in capsys.readouterr().err


def test_committed_tidy_csvs_match_the_leaderboards():
    rows = read_leaderboards(REPO / "leaderboards")
    expected = tidy_tables(rows)
    folder = REPO / "leaderboards" / TIDY_FOLDER
    assert sorted(p.stem for p in folder.glob("*.csv")) == sorted(expected), "run `bench leaderboard`"
    for name, frame in expected.items():
        committed = pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)
        assert committed.equals(frame.reset_index(drop=True).astype(str)), f"{name}: run `bench leaderboard`"
    assert all(re.fullmatch(r"[a-z0-9_-]+__[a-z0-9_-]+__[a-z_]+", name) for name in expected)
