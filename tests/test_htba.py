"""HTBA placement and poison-rate semantics (spec section 1)."""

from __future__ import annotations

import numpy as np
import pytest

from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.errors import BenchError


def _attack(**kw) -> HTBA:
    return HTBA(HTBAConfig(**kw))


@pytest.mark.parametrize("rate", [0.5, 1.0, 0.25])
def test_rate_is_a_fraction_of_the_target_class(tiny_splits, rate):
    p = _attack(trigger_size=6).poison(tiny_splits.train, [3], rate, seed=0)
    n_target = int((tiny_splits.train.labels == 3).sum())
    assert p.poison_mask.sum() == int(rate * n_target)
    # only target-class images are poisoned (clean-label attack)
    assert (tiny_splits.train.labels[p.poison_mask] == 3).all()
    assert (p.poison_target[p.poison_mask] == 3).all() and (p.poison_target[~p.poison_mask] == -1).all()


def test_trigger_pasted_opaquely_inside_the_central_region(tiny_splits):
    attack = _attack(trigger_size=6)
    p = attack.poison(tiny_splits.train, [1], 1.0, seed=0)
    trigger = p.triggers[1]
    size = tiny_splits.train.image_size
    for i in p.poison_indices:
        x, y, w, h = p.boxes[i]
        assert (w, h) == (6, 6)
        # HTBA: x in [floor(0.25 W), floor(0.75 W - w)]
        assert 8 <= x <= 24 - 6 and 8 <= y <= 24 - 6
        np.testing.assert_array_equal(p.train.images[i, y:y + h, x:x + w], trigger)
    clean = ~p.poison_mask
    np.testing.assert_array_equal(p.train.images[clean], tiny_splits.train.images[clean])
    assert (p.boxes[clean] == -1).all()
    assert size == 32


def test_patched_val_covers_every_image_with_the_wider_region(tiny_splits):
    attack = _attack(trigger_size=6)
    patched = attack.patch_val(tiny_splits.val, 2, seed=0)
    assert len(patched.images) == len(tiny_splits.val)
    x, y = patched.boxes[:, 0], patched.boxes[:, 1]
    assert x.min() >= 3 and x.max() <= int(0.9 * 32 - 6) and y.min() >= 3
    for img, (bx, by, bw, bh) in zip(patched.images, patched.boxes):
        np.testing.assert_array_equal(img[by:by + bh, bx:bx + bw], attack.trigger_for(2, 32))


def test_deterministic_for_a_seed_and_different_across_seeds(tiny_splits):
    a = _attack(trigger_size=6).poison(tiny_splits.train, [0], 0.5, seed=7)
    b = _attack(trigger_size=6).poison(tiny_splits.train, [0], 0.5, seed=7)
    c = _attack(trigger_size=6).poison(tiny_splits.train, [0], 0.5, seed=8)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.boxes, c.boxes)


def test_trigger_size_as_fraction_of_the_image(tiny_splits):
    p = _attack(trigger_size=0.25).poison(tiny_splits.train, [0], 1.0, seed=0)
    assert p.triggers[0].shape == (8, 8, 3)


def test_png_trigger_is_loaded_and_resized(tiny_splits, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    p = _attack(trigger=str(tmp_path / "t.png"), trigger_size=5).poison(tiny_splits.train, [0], 1.0, 0)
    assert p.triggers[0].shape == (5, 5, 3)


@pytest.mark.parametrize("size, message", [(40, "larger than the 32px image"), (20, "does not fit in the region")])
def test_trigger_too_large_is_a_clear_error(tiny_splits, size, message):
    with pytest.raises(BenchError, match=message):
        _attack(trigger_size=size).poison(tiny_splits.train, [0], 1.0, seed=0)


def test_corrupt_trigger_file_is_a_clear_error(tiny_splits, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(BenchError, match="not a readable image"):
        _attack(trigger=str(bad), trigger_size=5).poison(tiny_splits.train, [0], 1.0, seed=0)


def test_rate_out_of_range(tiny_splits):
    with pytest.raises(BenchError, match="poison rate"):
        _attack(trigger_size=5).poison(tiny_splits.train, [0], 1.5, seed=0)
