"""Pretraining: resumable mid-training with identical results, checkpoints loaded safely."""

from __future__ import annotations

import pytest
import torch

from benchsuite.registry import get_registry
from benchsuite.ssl.trainer import TrainConfig, lr_at, pretrain

CFG = TrainConfig(epochs=2, batch_size=32, lr=0.1, warmup_epochs=1)


def _method(seed=0):
    torch.manual_seed(seed)
    registry = get_registry()
    return registry.get("ssl", "simclr")(registry.get("backbone", "resnet18")(32, width=8, stem_stride=2))


def test_resume_after_an_interrupted_epoch_matches_an_uninterrupted_run(tiny_splits, tmp_path):
    images = tiny_splits.train.images[:96]
    full = pretrain(_method(), images, CFG, seed=1, workdir=tmp_path / "full")

    class Stop(Exception):
        pass

    calls = {"n": 0}
    method = _method()
    original = method.after_step

    def after_step(progress):
        original(progress)
        calls["n"] += 1
        if calls["n"] == 4:  # 3 steps per epoch: killed in the middle of the second epoch
            raise Stop

    method.after_step = after_step
    with pytest.raises(Stop):
        pretrain(method, images, CFG, seed=1, workdir=tmp_path / "resume")
    resumed = pretrain(_method(seed=123), images, CFG, seed=1, workdir=tmp_path / "resume")
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(CFG, s, 20, 10) for s in range(20)]
    base = CFG.lr * CFG.batch_size / 256
    assert lrs[0] == pytest.approx(base / 10) and lrs[9] == pytest.approx(base)
    assert lrs[10] == pytest.approx(base) and lrs[-1] < base * 0.05
