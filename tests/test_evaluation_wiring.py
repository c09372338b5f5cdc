"""A planted backdoored encoder through the suite's evaluation wiring (patched validation set, cached
features, probe, metrics): a high patched ASR for it against a low one for its trigger-blind twin, each
checked against the share of patched images the encoder's own trigger gate fires on (computed apart)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from benchsuite.api import Splits, hookimpl
from benchsuite.settings.config import apply_override, build_config, read_preset
from benchsuite.settings.registry import build_registry, discover_plugins
from benchsuite.ssl.augment import AugmentConfig, normalize, to_float
from benchsuite.stages import Cell, Encoder, Stages
from tests.conftest import TINY_OVERRIDES
from tests.fixtures_planted import colour_data, pixel_trigger, single_thread, ssl_backdoor_encoder

TARGET = 0


class ColourDataset:
    @hookimpl
    def benchsuite_datasets(self):
        return {"colour": lambda path=None, **options: Splits(colour_data(30, seed=0), colour_data(12, seed=1))}


@pytest.fixture(scope="module")
def wired(tmp_path_factory):
    root = tmp_path_factory.mktemp("wiring")
    trigger = pixel_trigger(8)
    Image.fromarray(trigger).save(root / "trigger.png")
    data = read_preset("smoke")
    for item in [*TINY_OVERRIDES, 'dataset.name="colour"', f'attack.htba.trigger="{root / "trigger.png"}"',
                 "attack.htba.trigger_size=8", "probe.label_fraction=0.5", "probe.seeds=[1, 2]"]:
        apply_override(data, item)
    registry = build_registry([*discover_plugins()[0], ("colour", ColourDataset())])
    stages = Stages(build_config(data), registry, root / "cache")
    return stages, trigger


def _with_probe(stages: Stages, **changes) -> Stages:
    """The same run (cache, data, attack) with another probe."""
    config = replace(stages.config, probe=replace(stages.config.probe, **changes))
    return Stages(config, stages.registry, stages.cache.root)


def _gate_share(stages: Stages, encoder: torch.nn.Module) -> float:
    """Percent of the patched non-target validation images on which the encoder's trigger gate is open."""
    patched = stages.patched_val("htba", TARGET, 0)
    keep = patched.labels != TARGET
    with torch.inference_mode():
        gate = encoder.gate(normalize(to_float(torch.from_numpy(np.asarray(patched.images[keep]))), AugmentConfig()))
    return 100.0 * float((gate > 0.5).float().mean())


def test_a_planted_backdoor_reads_as_a_high_asr_and_its_blind_twin_as_a_low_one(wired):
    stages, trigger = wired
    train = stages.splits().train
    cell = Cell("htba", (TARGET,), 0.5, 0)
    with single_thread():
        backdoored = ssl_backdoor_encoder(train, trigger, TARGET)
        blind = ssl_backdoor_encoder(train, trigger, TARGET, sensitive=False)
        [attacked] = stages.evaluate(Encoder("planted-backdoor", backdoored), cell)
        [clean] = stages.evaluate(Encoder("planted-blind", blind), cell)
        gate = _gate_share(stages, backdoored)
    assert gate > 90  # the lever: the trigger is on the patched images and the planted gate sees it
    # the triggered images go where the gate sends them: the target class (its mean representation)
    assert attacked["patched_asr"] == pytest.approx(gate, abs=5)
    assert attacked["patched_asr"] > 85 and clean["patched_asr"] < 15
    # both encoders keep the clean task (the hue classes) and the clean images are not sent to the target
    assert attacked["clean_acc"] > 80 and clean["clean_acc"] > 80 and attacked["clean_asr"] < 15
    # BadEncoder's ASR also counts the target class's own triggered images, which the probe calls the target
    n_target = int((stages.patched_val("htba", TARGET, 0).labels == TARGET).sum())
    n_all = len(stages.patched_val("htba", TARGET, 0).labels)
    expected = (attacked["patched_asr"] * (n_all - n_target) + 100.0 * n_target) / n_all
    assert attacked["badencoder_asr"] == pytest.approx(expected, abs=100.0 / n_all + 1e-6)


def test_patchsearchs_linear_evaluation_reads_the_same_backdoor(wired):
    """probe.kind = "lincls" trains on augmented images through the encoder (no cached features)."""
    stages, trigger = wired
    lincls = _with_probe(stages, kind="lincls", lincls_epochs=15, lincls_lr=2.0, lincls_batch_size=50, seeds=(1,))
    train = stages.splits().train
    cell = Cell("htba", (TARGET,), 0.5, 0)
    with single_thread():
        [attacked] = lincls.evaluate(Encoder("planted-backdoor", ssl_backdoor_encoder(train, trigger, TARGET)), cell)
        [clean] = lincls.evaluate(Encoder("planted-blind", ssl_backdoor_encoder(train, trigger, TARGET,
                                                                                 sensitive=False)), cell)
    assert attacked["patched_asr"] > 85 and clean["patched_asr"] < 15
    assert attacked["clean_acc"] > 80 and clean["clean_acc"] > 80
