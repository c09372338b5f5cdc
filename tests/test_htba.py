"""HTBA placement and poison-rate semantics (spec section 1)."""

from __future__ import annotations

import numpy as np
import pytest

from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.core.errors import BenchError


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
    for i in p.poison_indices:
        x, y, w, h = p.boxes[i]
        assert (w, h) == (6, 6)
        # HTBA: x in [floor(0.25 W), floor(0.75 W - w)]
        assert 8 <= x <= 24 - 6 and 8 <= y <= 24 - 6
        np.testing.assert_array_equal(p.train.images[i, y:y + h, x:x + w], trigger)
    clean = ~p.poison_mask
    np.testing.assert_array_equal(p.train.images[clean], tiny_splits.train.images[clean])
    assert (p.boxes[clean] == -1).all()


@pytest.mark.parametrize("size, side", [(48, 6), (40, 5)])
def test_corners_cover_the_htba_range_both_ends_inclusive(size, side):
    from benchsuite.data import ImageDataset

    n = 400  # one class: every image is a poison at rate 1, enough to reach both ends of the range
    train = ImageDataset(np.zeros((n, size, size, 3), dtype=np.uint8), np.zeros(n, dtype=np.int64), ["a"])
    p = _attack(trigger_size=side).poison(train, [0], 1.0, seed=0)
    first, last = size // 4, int(0.75 * size - side)  # HTBA: [floor(0.25 W), floor(0.75 W - w)]
    for corner in (p.boxes[:, 0], p.boxes[:, 1]):
        assert corner.min() == first and corner.max() == last
    assert (p.boxes[:, 2:] == side).all()


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


def _native_folder(root, sizes, edit=None):
    """A two-class ImageFolder of non-square PNGs; ``edit`` may change a class-0 training image first."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                if edit and split == "train" and label == 0:
                    img = edit(img)
                img.save(root / split / cls / f"{i}.png")


def test_native_paste_space_pastes_before_the_resize_and_centre_crop(tmp_path):
    from PIL import Image

    from benchsuite.data.loaders import load_imagefolder
    from benchsuite.triggers import random_trigger

    sizes = [(120, 80), (80, 120)]
    _native_folder(tmp_path / "clean", sizes)
    clean = load_imagefolder(str(tmp_path / "clean"), image_size=40)
    # location (0.5, 0.5): the HTBA range collapses to its minimum, floor(0.5 W), floor(0.5 H)
    attack = _attack(trigger_size=20, train_location=(0.5, 0.5), paste_space="native")
    p = attack.poison(clean.train, [0], 1.0, seed=0)
    trigger = random_trigger(20, [0, 0])

    def pasted(img):
        img = img.copy()
        img.paste(Image.fromarray(trigger), (img.width // 2, img.height // 2))
        return img

    # the reference: the trigger pasted into the native file, then loaded as usual
    _native_folder(tmp_path / "ref", sizes, pasted)
    ref = load_imagefolder(str(tmp_path / "ref"), image_size=40).train
    assert p.poison_mask.tolist() == [True, True, False, False]
    # 20 native px at scale 0.5 = a 10 px box; (60, 40) -> (60 * 0.5 - 10, 20); (40, 60) -> (20, 60 * 0.5 - 10)
    assert p.boxes[:2].tolist() == [[20, 20, 10, 10], [20, 20, 10, 10]]
    diff = np.abs(p.train.images.astype(int) - ref.images.astype(int))
    assert diff[:, 21:29, 21:29].max() <= 1  # inside the box: the downscaled trigger, pixel for pixel
    assert diff[:, :17].max() == 0 and diff[:, 33:].max() == 0  # beyond the filter's reach: untouched
    crop = _attack(trigger_size=20, train_location=(0.25, 0.75)).poison(clean.train, [0], 1.0, seed=0)
    assert crop.boxes[0, 2] == 20  # the default pastes 20 px into the stored 40 px crop


def test_native_paste_space_needs_the_native_geometry(tiny_splits):
    with pytest.raises(BenchError, match="paste_space = 'native' needs .*imagefolder.*paste_space=crop"):
        _attack(trigger_size=6, paste_space="native").poison(tiny_splits.train, [0], 1.0, seed=0)
    with pytest.raises(BenchError, match="paste_space 'nope' .*native or crop"):
        _attack(paste_space="nope")


def test_native_paste_space_leaves_the_patched_val_in_the_stored_crop(tiny_splits):
    native = _attack(trigger_size=6, paste_space="native").patch_val(tiny_splits.val, 2, seed=0)
    crop = _attack(trigger_size=6).patch_val(tiny_splits.val, 2, seed=0)
    np.testing.assert_array_equal(native.images, crop.images)  # spec 1.5: val is pasted at 224


def test_paper_preset_names_its_trigger_and_asks_for_the_file(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from benchsuite.cli import _config_from_args, main, parser
    from benchsuite.engine.grid import GridRunner
    from benchsuite.settings.registry import get_registry

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--preset", "paper", "--data-path", str(tmp_path), "--out", str(tmp_path / "runs"),
            "--device", "cpu", "--dry-run"]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: attack htba: trigger file trigger_10.png not found") and "--trigger" in last
    Image.fromarray(np.zeros((80, 80, 3), dtype=np.uint8)).save(tmp_path / "t10.png")
    config = _config_from_args(parser().parse_args([*argv, "--trigger", "t10.png"]))
    assert config.attack["htba"]["trigger"] == "t10.png" and config.attack["htba"]["paste_space"] == "native"
    GridRunner(config, get_registry(), tmp_path / "runs")  # builds the attack: the file is found
    Image.fromarray(np.zeros((80, 80, 3), dtype=np.uint8)).save(tmp_path / "trigger_10.png")
    preset = _config_from_args(parser().parse_args(argv))  # the preset's own file, found in the working folder
    GridRunner(preset, get_registry(), tmp_path / "runs")
