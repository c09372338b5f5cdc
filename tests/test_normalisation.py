"""One normalisation per encoder: a run trained with non-default ``train.augment.mean / std`` hands the same
statistics to every stage that feeds its encoder an image (probe features, filters, SSL-Cleanse's inversion and
mitigation, i-CutMix's black box, a model attack's context).

A spy encoder keeps every input it is given. De-normalised with the run's statistics, every input must be an
image in [0, 1] spanning the full range (the test images have black and white pixels); ImageNet's statistics
would put black at -0.96 and white at 1.22 here, so a consumer that used them is caught.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from benchsuite.api import DefenseContext
from benchsuite.api.context import IMAGENET_MEAN, IMAGENET_STD
from benchsuite.defenses.icutmix import ICutMix, ICutMixConfig
from benchsuite.defenses.patchsearch import PatchSearch, PatchSearchConfig
from benchsuite.defenses.sslcleanse import SSLCleanse
from benchsuite.settings.config import apply_override, build_config, read_preset
from benchsuite.settings.registry import get_registry
from benchsuite.ssl.augment import AugmentConfig
from benchsuite.ssl.simclr import SimCLR, SimCLRConfig
from benchsuite.stages import Encoder, Stages
from tests.conftest import TINY_OVERRIDES
from tests.fixtures_planted import PlantedEncoder, single_thread
from tests.test_sslcleanse import SMALL

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.4, 0.25)


class Spy(nn.Module):
    """Wraps an encoder and records every batch it is fed (forward and forward_features)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []
        self.num_features = inner.num_features
        self.gain = nn.Parameter(torch.ones(1))  # something a repair can train

    def forward_features(self, x):
        self.seen.append(x.detach().float().cpu())
        return self.inner.forward_features(x)

    def forward_head(self, feats, pre_logits: bool = False):
        return self.gain * self.inner.forward_head(feats, pre_logits)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def pixel_range(self) -> tuple[float, float]:
        """(min, max) over every input seen, de-normalised with the run's statistics."""
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        pixels = [x * std + mean for x in self.seen]
        return min(float(p.min()) for p in pixels), max(float(p.max()) for p in pixels)


def checkered(n: int = 60, seed: int = 0) -> np.ndarray:
    """Random images with black and white pixels in every one."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    images[:, ::4, ::4] = 0
    images[:, 2::4, 2::4] = 255
    return images


def assert_run_statistics(spy: Spy) -> None:
    assert spy.seen, "the consumer never ran the encoder"
    low, high = spy.pixel_range()
    assert -1e-4 <= low <= 0.02 and 0.98 <= high <= 1 + 1e-4, (low, high)


def spy_encoder(images: np.ndarray) -> Spy:
    trigger = np.zeros((6, 6, 3), np.uint8)
    trigger[::2] = 255
    return Spy(PlantedEncoder(trigger, gain=0.0).eval())


def context(images: np.ndarray, encoder: nn.Module, tmp_path) -> DefenseContext:
    return DefenseContext(images, encoder, None, 10, 0, torch.device("cpu"), tmp_path, MEAN, STD)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    data = read_preset("smoke")
    for item in [*TINY_OVERRIDES, f"train.augment.mean={list(MEAN)}", f"train.augment.std={list(STD)}"]:
        apply_override(data, item)
    return Stages(build_config(data), get_registry(), tmp_path_factory.mktemp("norm") / "cache")


def test_the_stages_hand_the_run_statistics_to_every_consumer(stages, tmp_path):
    assert stages.input_norm == (MEAN, STD)
    images = checkered()
    spy = spy_encoder(images)
    stages.features(Encoder("spy", spy), images, "checkered", "checkered-data")  # the probe's features
    assert_run_statistics(spy)
    ctx = stages.defender_context(Encoder("spy", spy_encoder(images)), 0, tmp_path)  # detectors and repairers
    assert (ctx.mean, ctx.std) == (MEAN, STD)
    method = stages.build_method()  # what i-CutMix reads to write black into a normalised view
    assert (method.input_mean, method.input_std) == (MEAN, STD)


def test_a_filter_normalises_with_the_encoders_statistics(tmp_path):
    images = checkered()
    spy = spy_encoder(images)
    cfg = PatchSearchConfig(num_clusters=4, window=8, flip_set_size=8, top_k=5, classifier_models=1,
                            classifier_width=4, classifier_iterations=5, classifier_eval_every=5, pictures=0,
                            min_flip_fraction=0.0)
    with single_thread():
        PatchSearch(cfg).detect(context(images, spy, tmp_path))
    assert_run_statistics(spy)


def test_sslcleanse_inverts_and_mitigates_with_the_encoders_statistics(tmp_path):
    images = checkered(80)
    fast = replace(SMALL, k_min=3, k_max=4, epochs=2, mitigate_epochs=1, mitigate_batch_size=40,
                   mitigate_when="always", jitter_prob=0.0)
    spy = spy_encoder(images)
    defense = SSLCleanse(fast)
    with single_thread():
        verdict = defense.inspect(context(images, spy, tmp_path))
        assert_run_statistics(spy)
        spy.seen.clear()
        defense.repair(context(images, spy, tmp_path), verdict)
    assert_run_statistics(spy)


def test_icutmix_writes_black_in_the_methods_normalisation():
    method = SimCLR(PlantedEncoder(np.zeros((4, 4, 3), np.uint8)), SimCLRConfig())
    method.input_mean, method.input_std = MEAN, STD
    wrapped = ICutMix(replace(ICutMixConfig(), paste="black", alpha=1.0)).wrap_method(method)
    view = torch.full((4, 3, 32, 32), 5.0)
    mixed, _, _ = wrapped.mix(view)
    black = -torch.tensor(MEAN) / torch.tensor(STD)
    written = mixed[mixed != 5.0].view(-1)
    assert written.numel() and torch.isin(written, black).all()
    assert not torch.isin(written, -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).any()


def test_the_contexts_default_is_the_augmentations_default():
    assert (AugmentConfig().mean, AugmentConfig().std) == (IMAGENET_MEAN, IMAGENET_STD)
