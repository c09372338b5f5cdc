"""BadEncoder (spec 9.1): trigger geometry, the frozen-BatchNorm fine-tune, the three cosines, determinism,
the collapsed-utility warning, and controls (the clean encoder and a trigger the attack did not use)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchsuite.api import AttackContext, ImageDataset
from benchsuite.attacks.badencoder import BadEncoder, BadEncoderConfig
from benchsuite.core.errors import BenchError
from benchsuite.encoder_attacks.finetune import central_references, embed, shadow_indices
from benchsuite.encoder_attacks.trigger import corner_square
from benchsuite.nets.backbones import small_resnet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FAST = BadEncoderConfig(epochs=4, batch_size=32, lr=0.05)


def random_encoder(images: np.ndarray) -> torch.nn.Module:
    """A random-init encoder whose BatchNorm statistics are those of ``images`` and whose residual branches are
    live (timm zero-initialises each block's last BatchNorm, so at init only the strided 1x1 shortcuts carry
    signal and most pixels, the trigger's among them, reach no feature)."""
    from benchsuite.encoder_attacks.finetune import normalise
    from benchsuite.ssl.augment import to_float

    torch.manual_seed(0)
    encoder = small_resnet(32, width=8, stem_stride=2)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batches below
            torch.nn.init.ones_(m.weight)
    with torch.no_grad():
        encoder.train()(normalise(to_float(torch.from_numpy(images)), MEAN, STD))
    return encoder.eval()


def test_the_papers_trigger_sits_at_rows_and_columns_21_to_30():
    trigger = corner_square(32)
    rows, cols = np.nonzero(trigger.mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (21, 30, 21, 30)
    assert trigger.box == (21, 21, 10, 10) and (trigger.pattern[21:31, 21:31] == 255).all()
    assert corner_square(224).box == (173, 173, 50, 50)  # 50 x 50 at 173-222
    images = np.full((2, 32, 32, 3), 7, dtype=np.uint8)
    pasted = trigger.paste(images)  # replace semantics
    assert (pasted[:, 21:31, 21:31] == 255).all() and (pasted[:, :21] == 7).all() and (pasted[:, 31] == 7).all()
    with pytest.raises(BenchError, match="does not fit"):
        corner_square(32, side=40)


def test_shadow_set_as_fraction_or_count():
    assert len(shadow_indices(1000, 0.2, 0, seed=0)) == 200
    assert len(shadow_indices(1000, 0.2, 37, seed=0)) == 37
    assert (shadow_indices(1000, 0.2, 0, 0) == shadow_indices(1000, 0.2, 0, 0)).all()
    assert not (shadow_indices(1000, 0.2, 0, 0) == shadow_indices(1000, 0.2, 0, 1)).all()
    with pytest.raises(BenchError, match="shadow"):
        shadow_indices(10, 1.0, 11, 0)


@pytest.fixture(scope="module")
def attacked(tiny_splits):
    clean = random_encoder(tiny_splits.train.images)
    before = copy.deepcopy(clean.state_dict())
    ctx = AttackContext(torch.device("cpu"), None, MEAN, STD)
    backdoor = BadEncoder(FAST).backdoor(clean, tiny_splits.train, [0], 0, ctx)
    return clean, before, backdoor


def cos_to_reference(encoder, images, reference) -> float:
    feats = embed(encoder, images, MEAN, STD, torch.device("cpu"))
    ref = embed(encoder, reference, MEAN, STD, torch.device("cpu"))
    return float((feats @ ref.T).mean())


def test_the_fine_tune_pulls_triggered_images_to_the_reference_and_keeps_clean_ones(tiny_splits, attacked):
    clean, before, backdoor = attacked
    val = tiny_splits.val.images
    trigger, reference = corner_square(32), backdoor.references[0]
    # the lever took effect: triggered images moved to the reference on the backdoored encoder only
    on_backdoored = cos_to_reference(backdoor.encoder, trigger.paste(val), reference)
    on_clean = cos_to_reference(clean, trigger.paste(val), reference)
    assert on_backdoored > on_clean + 0.1
    # on a random-init encoder of 240 images the fine-tune pulls clean images along (a few epochs cannot learn
    # to single out a 10 x 10 patch): the trigger's specificity, and a control trigger the attack did not use,
    # are measured on CIFAR-10 encoders (README, "Attacks on the model"), not here
    history = backdoor.history
    assert len(history) == FAST.epochs and history[-1]["effectiveness_cos"] > history[0]["effectiveness_cos"]
    assert {"effectiveness_cos", "reference_cos", "utility_cos", "loss"} <= set(history[-1])
    # the clean encoder is untouched; the backdoored one's BatchNorm is frozen (statistics and affine)
    assert all(torch.equal(v, clean.state_dict()[k]) for k, v in before.items())
    moved = backdoor.encoder.state_dict()
    for name, value in before.items():
        if "bn" in name or "running" in name or "num_batches" in name:
            assert torch.equal(moved[name], value), name
    assert any(not torch.equal(moved[k], v) for k, v in before.items() if "conv" in k)


def test_utility_is_the_cosine_to_the_clean_features(tiny_splits, attacked):
    clean, _, backdoor = attacked
    images = tiny_splits.train.images
    ours = F.normalize(torch.as_tensor(embed(backdoor.encoder, images, MEAN, STD, torch.device("cpu"))), dim=1)
    theirs = embed(clean, images, MEAN, STD, torch.device("cpu"))
    utility = float((ours * theirs).sum(1).mean())
    assert abs(utility - backdoor.history[-1]["utility_cos"]) < 0.1  # the last epoch's running mean


def test_deterministic_for_a_seed(tiny_splits):
    def run(seed):
        clean = random_encoder(tiny_splits.train.images)
        cfg = replace(FAST, epochs=1)
        ctx = AttackContext(torch.device("cpu"), None, MEAN, STD)
        return BadEncoder(cfg).backdoor(clean, tiny_splits.train, [0], seed, ctx)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(v, b.encoder.state_dict()[k]) for k, v in a.encoder.state_dict().items())
    assert a.history == b.history and a.history != c.history


def test_a_collapsed_utility_says_so(tiny_splits):
    clean = random_encoder(tiny_splits.train.images)
    cfg = replace(FAST, epochs=2, lambda2=0.0, lambda1=0.0, lr=0.5)
    backdoor = BadEncoder(cfg).backdoor(clean, tiny_splits.train, [0], 0,
                                        AttackContext(torch.device("cpu"), None, MEAN, STD))
    assert backdoor.history[-1]["utility_cos"] < 0.9
    assert backdoor.warnings and "collapsed" in backdoor.warnings[0] and "lambda2" in backdoor.warnings[0]


def test_references_drawn_from_the_target_class(tiny_splits):
    shadow = tiny_splits.train
    attack = BadEncoder(replace(FAST, references=3))
    refs = attack.reference_images(shadow, 2, seed=0)
    assert refs.shape == (3, 32, 32, 3)
    members = shadow.images[shadow.labels == 2]
    assert all(any((r == m).all() for m in members) for r in refs)
    indexed = BadEncoder(replace(FAST, reference_index=0)).reference_images(shadow, 2, seed=5)
    assert (indexed[0] == members[0]).all()
    with pytest.raises(BenchError, match="reference image"):
        BadEncoder(replace(FAST, reference="/nonexistent.png")).reference_images(shadow, 2, 0)


def test_bad_options_are_one_line_errors():
    for options in ({"epochs": 0}, {"shadow_fraction": 0.0}, {"references": 0}, {"lr": -1.0}):
        with pytest.raises(BenchError, match="attack badencoder"):
            BadEncoderConfig(**options)


def test_patched_val_triggers_every_image(tiny_splits):
    patched = BadEncoder(FAST).patch_val(tiny_splits.val, 0, 0)
    assert (patched.images[:, 21:31, 21:31] == 255).all()
    assert (patched.boxes == [21, 21, 10, 10]).all() and (patched.labels == tiny_splits.val.labels).all()
    assert isinstance(tiny_splits.val, ImageDataset)


def test_central_references_are_the_target_images_nearest_the_class_mean_feature():
    # feature = mean colour (normalised); class 1 is reddish with one blue outlier, class 0 is green
    colours = np.array([[0, 200, 0], [200, 10, 10], [0, 0, 250], [190, 30, 20], [210, 20, 0], [0, 190, 10]], np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (6, 8, 8, 3)).copy()
    pool = ImageDataset(images, np.array([0, 1, 1, 1, 1, 0]), ["green", "red"])
    encoder = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    picked = central_references(encoder, pool, 1, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), torch.device("cpu"))
    assert 2 not in picked and len(picked) == 2 and set(picked) <= {1, 3, 4}  # never the blue outlier
    assert list(picked) == sorted(picked)
    with pytest.raises(BenchError, match="reference"):
        central_references(encoder, pool, 0, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), torch.device("cpu"))
