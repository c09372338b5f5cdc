"""`bench` end to end on a tiny configuration: tables, cache reuse, bad input."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from benchsuite.cli import main
from benchsuite.core.cache import StageCache
from benchsuite.reporting.results import TIMING_COLUMNS
from benchsuite.stages import features as features_stage
from benchsuite.stages import pretrain as pretrain_stage
from benchsuite.stages import probe as probe_stage
from tests.conftest import TINY_OVERRIDES


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


def _no_recompute(monkeypatch) -> list[tuple[str, str]]:
    """Make any stage computation fail the test; return the list of (stage, key) the cache serves."""
    def no_training(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr(pretrain_stage, "pretrain", no_training)
    monkeypatch.setattr(features_stage, "extract_features", no_training)
    monkeypatch.setattr(probe_stage, "fit_probe", no_training)
    served: list[tuple[str, str]] = []
    run = StageCache.run

    def loaded_only(self, stage, key, load, compute):
        def refuse():
            raise AssertionError(f"stage {stage}/{key} was recomputed")

        served.append((stage, key))
        return run(self, stage, key, load, refuse)

    monkeypatch.setattr(StageCache, "run", loaded_only)
    return served


def test_second_run_is_served_from_the_cell_files(tmp_path, tiny_args, monkeypatch):
    assert main(["run", *tiny_args]) == 0
    first = pd.read_csv(_run_dir(tmp_path) / "results.csv")
    served = _no_recompute(monkeypatch)
    assert main(["run", *tiny_args]) == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(_run_dir(tmp_path) / "results.csv"))
    assert {stage for stage, _ in served} <= {"dataset"}, served  # the cell itself came from its file


def test_cell_rows_of_an_older_row_version_are_rebuilt_from_the_cached_stages(tmp_path, tiny_args, monkeypatch):
    import benchsuite.engine.grid as grid

    assert main(["run", *tiny_args]) == 0
    first = pd.read_csv(_run_dir(tmp_path) / "results.csv")
    monkeypatch.setattr(grid, "ROWS_VERSION", grid.ROWS_VERSION + 1)  # rows gained columns since
    served = _no_recompute(monkeypatch)
    assert main(["run", *tiny_args]) == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(_run_dir(tmp_path) / "results.csv"))
    assert {"pretrain", "probe"} <= {stage for stage, _ in served}  # rebuilt, from cached stages only


def test_second_run_without_cell_files_loads_every_stage(tmp_path, tiny_args, monkeypatch):
    assert main(["run", *tiny_args]) == 0
    run_dir = _run_dir(tmp_path)
    first = pd.read_csv(run_dir / "results.csv")
    done = {(p.parent.parent.name, p.parent.name) for p in (tmp_path / "runs" / "cache").glob("*/*/DONE")}
    for cell in (run_dir / "cells").glob("*.json"):  # so the rerun must go through the stages
        cell.unlink()
    (run_dir / "results.csv").unlink()
    served = _no_recompute(monkeypatch)
    assert main(["run", *tiny_args]) == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(run_dir / "results.csv"))
    # every stage of the cell was reached and loaded: pretraining and probes included
    assert {"pretrain", "probe"} <= {stage for stage, _ in served} and set(served) <= done


def test_same_seed_gives_identical_results(tmp_path, tiny_args):
    assert main(["run", *tiny_args]) == 0
    first = pd.read_csv(_run_dir(tmp_path) / "results.csv")
    other = [a.replace(str(tmp_path / "runs"), str(tmp_path / "again")) for a in tiny_args]
    assert main(["run", *other]) == 0
    second = pd.read_csv(next(p for p in (tmp_path / "again").iterdir() if p.name != "cache") / "results.csv")
    # every column but the measured cost of the stages (wall time, memory)
    pd.testing.assert_frame_equal(first.drop(columns=TIMING_COLUMNS, errors="ignore"),
                                  second.drop(columns=TIMING_COLUMNS, errors="ignore"))


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
    if "--dataset" in argv:  # the synthetic generator's options are refused by another loader
        pairs = zip(tiny_args[::2], tiny_args[1::2])  # (--out, folder), (--set, item), ...
        tiny_args = [a for pair in pairs if not pair[1].startswith("dataset.") for a in pair]
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


def test_checkpoint_with_zero_epochs_evaluates_it(tmp_path):
    from safetensors.torch import load_file, save_file

    from benchsuite.eval.features import extract_features
    from benchsuite.settings.registry import get_registry

    torch.manual_seed(1234)  # not the run's seed: weights the run would not build itself
    backbone = get_registry().get("backbone", "resnet18")(32, width=8, stem_stride=2)
    with torch.no_grad():
        for value in backbone.state_dict().values():
            if value.is_floating_point():
                value.add_(0.1 * torch.randn_like(value))
    save_file(backbone.state_dict(), str(tmp_path / "enc.safetensors"))
    # the tiny overrides without train.epochs, which would win over --epochs
    args = ["--out", str(tmp_path / "runs"),
            *[x for item in TINY_OVERRIDES if not item.startswith("train.epochs") for x in ("--set", item)]]
    assert main(["run", *args, "--checkpoint", str(tmp_path / "enc.safetensors"), "--epochs", "0",
                 "--no-reference"]) == 0
    cache = tmp_path / "runs" / "cache"
    (encoder,) = cache.glob("pretrain/*/encoder.safetensors")
    stored = load_file(str(encoder))
    assert stored.keys() == backbone.state_dict().keys()
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(stored[name], value, rtol=0, atol=0, msg=name)
    # the probe's training features are the checkpoint's features of the training images
    (data,) = cache.glob("dataset/*/train_x.npy")
    train = [p.parent / "features.npy" for p in cache.glob("features/*/DONE") if '"train"' in p.read_text()]
    assert len(train) == 1
    expected = extract_features(backbone.eval(), np.load(data))
    np.testing.assert_allclose(np.load(train[0]), expected, rtol=1e-5, atol=1e-6)


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
        # the search's encoder forwards (the clustered features are their own stage) and time per image
        assert row["cost_forward_images"] > 0 and row["cost_ms_per_image"] > 0 and row["cost_pretrain_s"] > 0
    assert pd.isna(results.loc["none", "recall"])
