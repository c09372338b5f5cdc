"""`bench` end to end on a tiny configuration: tables, cache reuse, bad input."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from benchsuite import pipeline
from benchsuite.cli import main


def _run_dir(tmp_path):
    runs = [p for p in (tmp_path / "runs").iterdir() if p.name != "cache"]
    assert len(runs) == 1
    return runs[0]


def test_run_prints_table1_and_writes_results(tmp_path, tiny_args, capsys):
    assert main(["run", "--attack", "htba", "--defense", "none", "--targets", "0,1", *tiny_args]) == 0
    out = capsys.readouterr().out
    assert "w/o Defense" in out and "Clean model (ref.)" in out and "Average" in out
    results = pd.read_csv(_run_dir(tmp_path) / "results.csv")
    assert set(results["defense"]) == {"none", "clean-model"}
    assert sorted(results["target"].unique()) == [0, 1]
    for column in ("clean_acc", "clean_asr", "patched_acc", "patched_asr", "patched_fp"):
        assert results[column].between(0, 100 if column != "patched_fp" else 1e9).all()
    assert main(["table", str(_run_dir(tmp_path)), "--format", "markdown"]) == 0
    assert "| Dataset" in capsys.readouterr().out


def test_second_run_is_served_from_the_cache(tmp_path, tiny_args, monkeypatch):
    assert main(["run", *tiny_args]) == 0
    first = pd.read_csv(_run_dir(tmp_path) / "results.csv")

    def no_training(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr(pipeline, "pretrain", no_training)
    monkeypatch.setattr(pipeline, "extract_features", no_training)
    assert main(["run", *tiny_args]) == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(_run_dir(tmp_path) / "results.csv"))


def test_same_seed_gives_identical_results(tmp_path, tiny_args):
    assert main(["run", *tiny_args]) == 0
    first = pd.read_csv(_run_dir(tmp_path) / "results.csv")
    other = [a.replace(str(tmp_path / "runs"), str(tmp_path / "again")) for a in tiny_args]
    assert main(["run", *other]) == 0
    second = pd.read_csv(next(p for p in (tmp_path / "again").iterdir() if p.name != "cache") / "results.csv")
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize("argv, message", [
    (["--attack", "nope"], "unknown attack 'nope': known are"),
    (["--defense", "nope"], "unknown defense 'nope': known are"),
    (["--dataset", "nope"], "unknown dataset 'nope': known are"),
    (["--ssl", "nope", "--dry-run"], "unknown ssl 'nope': known are"),  # refused before any stage runs
    (["--targets", "12"], "target class 12 is out of range"),
    (["--dataset", "npz", "--data-path", "/does/not/exist"], "does not exist"),
    (["--dataset", "npz"], "needs a path"),
    (["--trigger-size", "40"], "larger than the 32px image"),
    (["--trigger", "/no/such.png"], "trigger file /no/such.png not found"),
    (["--set", "train.nope=1"], "unknown key\\(s\\) nope in \\[config.train\\]"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--seeds", "a,b"], "must be comma-separated integers"),
])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, tiny_args, capsys, argv, message):
    assert main(["run", *tiny_args, *argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:"), last
    assert re.search(message, last), last


def test_checkpoint_that_is_not_a_state_dict_keeps_finished_stages(tmp_path, tiny_args, capsys):
    assert main(["run", *tiny_args]) == 0
    cached = sorted(p.name for p in (tmp_path / "runs" / "cache" / "pretrain").iterdir())
    bad = tmp_path / "bad.pt"
    torch.save({"not": "tensors", "epoch": 3}, bad)
    assert main(["run", *tiny_args, "--checkpoint", str(bad)]) == 2
    assert "not a state dict" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    assert main(["run", *tiny_args, "--checkpoint", str(corrupt)]) == 2
    assert "is corrupt" in capsys.readouterr().err
    # the finished stages of the first run are still there
    assert cached == sorted(p.name for p in (tmp_path / "runs" / "cache" / "pretrain").iterdir()
                            if (p / "DONE").exists())


def test_checkpoint_with_zero_epochs_evaluates_it(tmp_path, tiny_args):
    from safetensors.torch import save_file

    from benchsuite.registry import get_registry

    backbone = get_registry().get("backbone", "resnet18")(32, width=8, stem_stride=2)
    save_file(backbone.state_dict(), str(tmp_path / "enc.safetensors"))
    assert main(["run", *tiny_args, "--checkpoint", str(tmp_path / "enc.safetensors"), "--epochs", "0",
                 "--no-reference"]) == 0


def test_filter_defenses_run_in_the_grid_with_table2_and_figures(tmp_path, tiny_args, capsys):
    argv = ["run", "--defense", "poisoncam,patchsearch", "--no-reference", *tiny_args,
            "--set", "defense.poisoncam.num_masks=16", "--set", "defense.poisoncam.classifier_iterations=40",
            "--set", "defense.patchsearch.classifier_iterations=40", "--set", "defense.poisoncam.min_flip_fraction=0",
            "--set", "defense.patchsearch.min_flip_fraction=0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "w/o Defense" in out and "PoisonCAM" in out and "PatchSearch" in out
    assert "Detection per target" in out and "Top-20 Acc" in out
    run_dir = _run_dir(tmp_path)
    results = pd.read_csv(run_dir / "results.csv").set_index("defense")
    for defense in ("poisoncam", "patchsearch"):
        row = results.loc[defense]
        assert row["n_train"] == 240 - row["removed"]
        assert 0 <= row["top20_acc"] <= 100 and 0 <= row["recall"] <= 100
        assert (run_dir / row["figures"].split(";")[0]).is_file()
    assert pd.isna(results.loc["none", "recall"])
