"""Learning curve: snapshots kept at chosen epochs, each probed, written as curve.csv and a plot."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from benchsuite.cli import main
from benchsuite.core.cache import keyed_fields
from benchsuite.settings.registry import get_registry
from benchsuite.ssl.trainer import TrainConfig, pretrain

METRICS = ["clean_acc", "clean_asr", "patched_acc", "patched_asr", "patched_fp"]


def _run_dir(tmp_path):
    runs = [p for p in (tmp_path / "runs").iterdir() if p.name != "cache"]
    assert len(runs) == 1
    return runs[0]


def test_tiny_run_writes_the_curve_of_both_models(tmp_path, tiny_args):
    argv = ["run", *tiny_args, "--set", "train.epochs=2", "--set", "train.snapshots=[1, 2]"]
    assert main(argv) == 0
    run_dir = _run_dir(tmp_path)
    curve = pd.read_csv(run_dir / "curve.csv")
    assert sorted(zip(curve["model"], curve["epoch"])) == [("clean", 1), ("clean", 2),
                                                           ("poisoned", 1), ("poisoned", 2)]
    results = pd.read_csv(run_dir / "results.csv")
    for model, defense in (("poisoned", "none"), ("clean", "clean-model")):
        final = curve[(curve["model"] == model) & (curve["epoch"] == 2)].iloc[0]
        row = results[results["defense"] == defense].iloc[0]
        assert [final[m] for m in METRICS] == [row[m] for m in METRICS]
        assert final["encoder_key"] == row["encoder_key"]
        first = curve[(curve["model"] == model) & (curve["epoch"] == 1)].iloc[0]
        assert first["encoder_key"] != row["encoder_key"]  # the epoch-1 snapshot, probed on its own
    assert (run_dir / "figures" / "curve.png").stat().st_size > 0
    pretrain_dirs = [p for p in (tmp_path / "runs" / "cache" / "pretrain").iterdir() if p.is_dir()]
    assert all((d / "snapshot-e001.safetensors").is_file() for d in pretrain_dirs)
    assert main(["report", str(run_dir)]) == 0
    assert "Learning curve" in (run_dir / "report.html").read_text()
    # a cached encoder that lost a snapshot is retrained; the curve comes out the same (CPU: bit for bit)
    written = (run_dir / "curve.csv").read_text()
    (pretrain_dirs[0] / "snapshot-e001.safetensors").unlink()
    shutil.rmtree(run_dir / "cells")
    assert main(argv) == 0
    assert (pretrain_dirs[0] / "snapshot-e001.safetensors").is_file()
    assert (run_dir / "curve.csv").read_text() == written


@pytest.mark.parametrize("snapshots", ["[3]", "[0, 1]"])
def test_snapshot_outside_the_epochs_is_refused(tmp_path, tiny_args, capsys, snapshots):
    argv = ["run", *tiny_args, "--set", "train.epochs=2", "--set", f"train.snapshots={snapshots}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "train.snapshots" in err and "1..2" in err


def test_no_snapshots_leaves_the_cache_key_unchanged():
    assert "snapshots" not in keyed_fields(TrainConfig())
    assert keyed_fields(TrainConfig(epochs=4, snapshots=(2,)))["snapshots"] == (2,)


def test_snapshots_are_sorted_and_deduplicated():
    assert TrainConfig(epochs=4, snapshots=(4, 2, 2)).snapshots == (2, 4)


def _method():
    torch.manual_seed(0)
    registry = get_registry()
    return registry.get("ssl", "simclr")(registry.get("backbone", "resnet18")(32, width=8, stem_stride=2))


def test_an_interrupted_pretraining_keeps_its_snapshots(tiny_splits, tmp_path):
    images = tiny_splits.train.images[:64]
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, snapshots=(1, 2))

    class Stop(Exception):
        pass

    method, calls = _method(), {"n": 0}
    original = method.after_step

    def after_step(progress):
        original(progress)
        calls["n"] += 1
        if calls["n"] == 5:  # 2 steps per epoch: killed in the third epoch
            raise Stop

    method.after_step = after_step
    with pytest.raises(Stop):
        pretrain(method, images, cfg, seed=1, workdir=tmp_path)
    kept = {e: (tmp_path / f"snapshot-e00{e}.safetensors").read_bytes() for e in (1, 2)}
    pretrain(_method(), images, cfg, seed=1, workdir=tmp_path)
    assert {e: (tmp_path / f"snapshot-e00{e}.safetensors").read_bytes() for e in (1, 2)} == kept
    assert not (tmp_path / "snapshot-e003.safetensors").exists()  # 3 is not a chosen epoch
