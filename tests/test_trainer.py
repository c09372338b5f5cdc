"""Pretraining: resumable mid-training with identical results, checkpoints loaded safely."""

from __future__ import annotations

import pytest
import torch

from benchsuite.settings.registry import get_registry
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


@pytest.mark.parametrize("name", ["byol", "moco_v3"])
def test_predictor_lr_scale_scales_only_the_predictors_first_step(name, tiny_splits, tmp_path):
    """One SGD step from the same weights: the predictor moves pred_lr_scale x as far, the rest alike."""
    from benchsuite.ssl.base import predictor_groups

    registry = get_registry()
    images = tiny_splits.train.images[:8]
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, warmup_epochs=0)  # 8 images, batch 8: one step

    def trained(scale):
        torch.manual_seed(0)
        backbone = registry.get("backbone", "resnet18")(32, width=8, stem_stride=2)
        method = registry.get("ssl", name)(backbone, registry.get("ssl", name).Config(
            pred_lr_scale=scale, proj_hidden=32, pred_hidden=32, proj_dim=16))
        start = {k: v.detach().clone() for k, v in method.named_parameters()}
        pretrain(method, images, cfg, seed=1, workdir=tmp_path / f"{name}-{scale}")
        return {k: v.detach() - start[k] for k, v in method.named_parameters()}

    base, fast = trained(1.0), trained(10.0)
    moved = [k for k in base if k.startswith("predictor.") and base[k].abs().max() > 0]
    assert moved
    for key in moved:  # deltas of weights near 1 carry float32 rounding of ~1e-7
        torch.testing.assert_close(fast[key], 10 * base[key], rtol=1e-3, atol=1e-6, msg=key)
    norm = lambda deltas: torch.cat([deltas[k].flatten() for k in moved]).norm()  # noqa: E731
    assert norm(fast) / norm(base) == pytest.approx(10, rel=1e-3)
    for key in (k for k in base if k.startswith("backbone.")):
        torch.testing.assert_close(fast[key], base[key], rtol=0, atol=0, msg=key)
    assert len(predictor_groups(registry.get("ssl", name)(
        registry.get("backbone", "resnet18")(32, width=8, stem_stride=2)), torch.nn.Linear(2, 2), 1.0)) == 1
