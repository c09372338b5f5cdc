"""PatchSearch's linear evaluation (``probe.kind = "lincls"``): its defaults and schedule are the code's, it
learns planted classes through a frozen encoder from augmented views, deterministically for a seed, and a
run with it reads the same backdoor as the cached-feature probe."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from benchsuite.core.errors import BenchError
from benchsuite.eval.lincls import fit_lincls, lincls_lr
from benchsuite.eval.probe import ProbeConfig, fit_probe
from benchsuite.settings.config import apply_override, build_config, read_preset
from tests.fixtures_planted import colour_data, pixel_trigger, single_thread, ssl_backdoor_encoder


def test_defaults_and_schedule_are_patchsearchs():
    cfg = ProbeConfig()
    assert (cfg.lincls_epochs, cfg.lincls_lr, cfg.lincls_batch_size) == (30, 0.1, 256)
    assert cfg.lincls_crop_scale == (0.08, 1.0)
    assert lincls_lr(0.1, 256, 0, 30) == pytest.approx(0.1)
    assert lincls_lr(0.1, 128, 0, 30) == pytest.approx(0.05)  # scaled by batch / 256
    assert lincls_lr(0.1, 256, 15, 30) == pytest.approx(0.05)  # half-way down the cosine
    assert lincls_lr(0.1, 256, 29, 30) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))


def test_it_learns_planted_classes_through_the_frozen_encoder_and_is_seeded():
    data, test = colour_data(20, seed=0), colour_data(10, seed=1)
    encoder = ssl_backdoor_encoder(data, pixel_trigger(8), sensitive=False)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = replace(ProbeConfig(), kind="lincls", lincls_epochs=15, lincls_lr=2.0, lincls_batch_size=50)
    with single_thread():
        predict = fit_lincls(encoder, data.images, data.labels, 10, cfg, seed=3)
        accuracy = float((predict(test.images) == test.labels).mean())
        again = fit_lincls(encoder, data.images, data.labels, 10, cfg, seed=3)(test.images)
        shuffled = fit_lincls(encoder, data.images, np.random.default_rng(0).permutation(data.labels), 10, cfg, 3)
    assert accuracy > 0.9
    assert (again == predict(test.images)).all()
    assert float((shuffled(test.images) == test.labels).mean()) < 0.4  # control: shuffled labels teach nothing
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # the encoder stays frozen


def test_lincls_is_validated_and_is_the_paper_presets_probe():
    data = read_preset("paper")
    assert data["probe"]["kind"] == "lincls"
    smoke = read_preset("smoke")
    for item in ['probe.kind="lincls"', "probe.lincls_lr=-1"]:
        apply_override(smoke, item)
    with pytest.raises(BenchError, match="lincls_lr"):
        build_config(smoke)
    with pytest.raises(BenchError, match="images, not features"):
        fit_probe(np.zeros((4, 2), np.float32), np.arange(4) % 2, 2, replace(ProbeConfig(), kind="lincls"), 0)
