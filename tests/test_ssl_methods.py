"""The SSL methods (registry-driven), their config checks, ViT details, accumulation, sharded augmentation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from benchsuite.api import config_from_options
from benchsuite.cli import main
from benchsuite.core.cache import stable_hash
from benchsuite.core.errors import BenchError
from benchsuite.settings.registry import get_registry
from benchsuite.ssl.augment import AugmentConfig, augment
from benchsuite.ssl.moco_v3 import sincos_2d
from benchsuite.ssl.trainer import TrainConfig, batch_sizes, loss_history, pretrain

REGISTRY = get_registry()
# small heads so a step takes milliseconds; a method not listed here runs with its defaults
SMALL = {
    "simclr": {"proj_hidden": 32, "proj_dim": 16},
    "moco_v2": {"proj_hidden": 32, "proj_dim": 16, "queue_size": 4096},
    "byol": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
    "moco_v3": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
}
CASES = [(name, "resnet18") for name in REGISTRY.names("ssl")] + [("moco_v3", "vit_tiny")]


def build(name: str, backbone: str = "resnet18", seed: int = 0, **options):
    torch.manual_seed(seed)
    if backbone == "vit_tiny":
        net = REGISTRY.get("backbone", "vit_tiny")(32, width=32, depth=2)
    else:
        net = REGISTRY.get("backbone", backbone)(32, width=8, stem_stride=2)
    cls = REGISTRY.get("ssl", name)
    return cls(net, config_from_options(cls.Config, {**SMALL.get(name, {}), **options}, name))


def _step(method, opt, x1, x2, progress):
    loss = method.loss(x1, x2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.after_step(progress)
    return loss.item()


@pytest.mark.parametrize("name, backbone", CASES)
def test_method_trains_on_a_batch_of_four(name, backbone):
    method = build(name, backbone)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(4, 3, 32, 32, generator=gen), torch.randn(4, 3, 32, 32, generator=gen)
    losses = [_step(method, opt, x1, x2, (i + 1) / 6) for i in range(6)]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name, options, message", [
    ("simclr", {"temperature": 0.0}, "ssl method simclr: temperature = 0.0 must be > 0"),
    ("moco_v2", {"queue_size": 0}, "ssl method moco_v2: queue_size = 0 must be > 0"),
    ("moco_v2", {"momentum": 1.5}, "momentum = 1.5 must be in \\[0, 1\\]"),
    ("byol", {"tau": -0.1}, "ssl method byol: tau = -0.1 must be in \\[0, 1\\]"),
    ("moco_v3", {"proj_layers": 1}, "ssl method moco_v3: proj_layers = 1 must be >= 2"),
    ("moco_v3", {"temperature": -1.0}, "temperature = -1.0 must be > 0: fix ssl.method_options.temperature"),
])
def test_bad_method_config_is_one_line_naming_the_option(name, options, message):
    cls = REGISTRY.get("ssl", name)
    with pytest.raises(BenchError, match=message) as err:
        config_from_options(cls.Config, options, name)
    assert "\n" not in str(err.value)


def test_moco_v2_refuses_a_queue_smaller_than_a_step_of_keys(tiny_splits, tmp_path):
    method = build("moco_v2", queue_size=16)
    with pytest.raises(BenchError, match="queue_size 16 is smaller than the 32 keys a step enqueues"):
        pretrain(method, tiny_splits.train.images[:32], TrainConfig(epochs=1, batch_size=16), 0, tmp_path)


def test_bad_method_option_on_the_command_line(tmp_path, tiny_args, capsys):
    assert main(["run", *tiny_args, "--no-reference", "--set", "ssl.method_options.temperature=0"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"error: ssl method simclr: temperature = 0(\.0)? must be > 0", last), last


def test_train_config_checks():
    with pytest.raises(BenchError, match="accumulate_steps = 0 must be >= 1"):
        TrainConfig(accumulate_steps=0)
    with pytest.raises(BenchError, match="unknown optimizer 'lamb'"):
        TrainConfig(optimizer="lamb")
    assert batch_sizes(TrainConfig(batch_size=256, accumulate_steps=4), 10_000, 2) == (256, 32)
    assert batch_sizes(TrainConfig(batch_size=256), 100, 4) == (100, 25)  # fewer images than a batch
    with pytest.raises(BenchError, match="does not split over 3 process"):
        batch_sizes(TrainConfig(batch_size=256), 10_000, 3)
    with pytest.raises(BenchError, match="micro-batches of 1 image"):
        batch_sizes(TrainConfig(batch_size=256, accumulate_steps=8), 20, 2)


def test_new_train_fields_keep_the_cache_keys_of_old_configs():
    """Encoders cached before accumulate_steps, augment2, lr drops and solarize existed keep their key."""

    @dataclass(frozen=True)
    class AugmentConfig:  # the fields before this change; the key includes the class name
        crop_scale: tuple = (0.2, 1.0)
        crop_ratio: tuple = (3 / 4, 4 / 3)
        flip_prob: float = 0.5
        jitter_prob: float = 0.8
        brightness: float = 0.4
        contrast: float = 0.4
        saturation: float = 0.4
        hue: float = 0.1
        gray_prob: float = 0.2
        blur_prob: float = 0.0
        blur_sigma: tuple = (0.1, 2.0)
        mean: tuple = (0.485, 0.456, 0.406)
        std: tuple = (0.229, 0.224, 0.225)
        crop_impl: str = "torchvision"  # keyed on purpose: the older crop's encoders are retrained

    @dataclass(frozen=True)
    class OldTrainConfig:
        epochs: int = 200
        batch_size: int = 256
        lr: float = 0.06
        weight_decay: float = 5e-4
        momentum: float = 0.9
        optimizer: str = "sgd"
        warmup_epochs: int = 0
        checkpoint_every: int = 1
        augment: AugmentConfig = field(default_factory=AugmentConfig)

    OldTrainConfig.__name__ = "TrainConfig"
    assert stable_hash(TrainConfig(epochs=15)) == stable_hash(OldTrainConfig(epochs=15))
    assert stable_hash(TrainConfig(epochs=15, accumulate_steps=2)) != stable_hash(OldTrainConfig(epochs=15))


def test_gradient_accumulation_trains_and_records_the_loss(tiny_splits, tmp_path):
    images = tiny_splits.train.images[:32]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.5, accumulate_steps=2)
    pretrain(build("simclr"), images, cfg, seed=0, workdir=tmp_path / "acc")
    history = loss_history(tmp_path / "acc")
    assert len(history) == 2 and all(np.isfinite(history))
    # a different split of the batch is a different (documented) computation
    pretrain(build("simclr"), images, TrainConfig(epochs=2, batch_size=16, lr=0.5), seed=0, workdir=tmp_path / "one")
    assert loss_history(tmp_path / "one") != history


def test_moco_v3_vit_keeps_a_frozen_patch_embedding_and_sincos_positions():
    method = build("moco_v3", "vit_tiny")
    vit = method.backbone
    assert vit.patch_embed.patch_size == (4, 4)  # 32 px: 8 x 8 patches
    assert not vit.patch_embed.proj.weight.requires_grad and not vit.pos_embed.requires_grad
    patch, pos = vit.patch_embed.proj.weight.clone(), vit.pos_embed.clone()
    torch.testing.assert_close(pos[0, 1:], sincos_2d(8, 8, 32))
    assert (pos[0, 0] == 0).all()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    _step(method, opt, torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), 0.5)
    assert torch.equal(vit.patch_embed.proj.weight, patch) and torch.equal(vit.pos_embed, pos)
    trainable = build("moco_v3", "vit_tiny", stop_grad_patch_embed=False, sincos_pos_embed=False).backbone
    assert trainable.patch_embed.proj.weight.requires_grad and trainable.pos_embed.requires_grad


def test_sincos_positions():
    table = sincos_2d(4, 6, 16)
    assert table.shape == (24, 16) and table.abs().max() <= 1
    assert len({tuple(row.tolist()) for row in table}) == 24  # every position distinct
    with pytest.raises(BenchError, match="divisible by 4"):
        sincos_2d(4, 4, 30)


def test_any_timm_vit_gets_a_patch_for_the_image_size():
    from benchsuite.nets.backbones import timm_backbone

    vit = timm_backbone("vit_tiny_patch16_224", 32, depth=1)
    assert vit.patch_embed.patch_size == (4, 4) and vit(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    assert timm_backbone("vit_tiny_patch16_224", 32, patch_size=8, depth=1).patch_embed.patch_size == (8, 8)


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_augmentation_equals_one_process(world):
    """Rank r augments rows r*b:(r+1)*b of a global batch exactly as one process would."""
    cfg = AugmentConfig(blur_prob=0.5, solarize_prob=0.3)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    full = augment(x, cfg, torch.Generator().manual_seed(7))
    b = len(x) // world
    parts = [augment(x[r * b:(r + 1) * b], cfg, torch.Generator().manual_seed(7), shard=(r * b, len(x)))
             for r in range(world)]
    torch.testing.assert_close(torch.cat(parts), full, rtol=0, atol=1e-6)
