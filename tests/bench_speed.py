"""Speed benchmarks (reported, not asserted): `make bench` or
``pytest tests/bench_speed.py --benchmark-enable --benchmark-only``.

SSL training steps/s for each registered method at the smoke preset's shapes, the batched
augmentation alone, feature extraction, and the linear probe on cached features.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchsuite.data.synthetic import make_synthetic
from benchsuite.eval.features import extract_features
from benchsuite.eval.probe import ProbeConfig, fit_probe
from benchsuite.settings.registry import get_registry
from benchsuite.ssl.augment import AugmentConfig, augment, to_float

BATCH = 256
REGISTRY = get_registry()


@pytest.fixture(scope="module")
def images():
    return make_synthetic(num_train_per_class=BATCH // 10 + 1, num_val_per_class=1).train.images[:BATCH]


def _backbone(name: str = "resnet18"):
    if name == "vit_tiny":  # ViT-Tiny at 32 px: patch 4, 64 tokens, width 192, depth 12
        return REGISTRY.get("backbone", "vit_tiny")(32)
    return REGISTRY.get("backbone", "resnet18")(32, width=32, stem_stride=2)


# every method on the smoke backbone, MoCo-v3 on a tiny ViT, and one method wrapped by i-CutMix
SSL_CASES = [(m, "resnet18", False) for m in REGISTRY.names("ssl")] + [("moco_v3", "vit_tiny", False),
                                                                      ("byol", "resnet18", True)]


@pytest.mark.parametrize("method_name, backbone, icutmix", SSL_CASES,
                         ids=[f"{m}-{b}{'-icutmix' if i else ''}" for m, b, i in SSL_CASES])
def test_ssl_training_step(benchmark, images, method_name, backbone, icutmix):
    from benchsuite.defenses.icutmix import ICutMix

    torch.manual_seed(0)
    method = REGISTRY.get("ssl", method_name)(_backbone(backbone))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    x = to_float(torch.from_numpy(images))
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig()
    if icutmix:
        method = ICutMix().wrap_method(method)
        method.generator = gen

    def step():
        loss = method.loss(augment(x, cfg, gen), augment(x, cfg, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(0.5)

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean


def test_augmentation_alone(benchmark, images):
    x = to_float(torch.from_numpy(images))
    gen = torch.Generator().manual_seed(0)
    benchmark.pedantic(lambda: augment(x, AugmentConfig(), gen), rounds=10, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean


def test_feature_extraction(benchmark, images):
    backbone = _backbone()
    batch = np.concatenate([images] * 4)
    benchmark.pedantic(lambda: extract_features(backbone, batch), rounds=3, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = len(batch) / benchmark.stats.stats.mean


def test_linear_probe_on_cached_features(benchmark):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5000, 256)).astype(np.float32)
    labels = rng.integers(0, 10, 5000)
    cfg = ProbeConfig(label_fraction=0.1)
    benchmark.pedantic(lambda: fit_probe(feats, labels, 10, cfg, 0)(feats), rounds=3, warmup_rounds=1)
