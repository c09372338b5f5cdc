"""Dataset loaders: generated default, .npz, ImageFolder, torchvision offline error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchsuite.core.errors import BenchError
from benchsuite.data.loaders import load_cifar10, load_imagefolder, load_npz, load_synthetic


def test_generated_default_is_balanced_and_deterministic():
    a = load_synthetic(train_per_class=10, val_per_class=4, generator_seed=1)
    b = load_synthetic(train_per_class=10, val_per_class=4, generator_seed=1)
    c = load_synthetic(train_per_class=10, val_per_class=4, generator_seed=2)
    assert a.train.images.shape == (100, 32, 32, 3) and a.train.images.dtype == np.uint8
    assert np.bincount(a.train.labels).tolist() == [10] * 10 and len(a.classes) == 10
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.train.images, c.train.images)


def _write_npz(folder, n=30, size=8, classes=3):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(folder / f"toy_{split}.npz", x=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                 y=np.arange(n) % classes)
    (folder / "classes.txt").write_text("a\nb\nc\n")


def test_npz_folder_with_class_names_and_limits(tmp_path):
    _write_npz(tmp_path)
    s = load_npz(str(tmp_path), limit_train_per_class=4)
    assert s.classes == ["a", "b", "c"]
    assert len(s.train) == 12 and len(s.val) == 30


def test_npz_errors_name_the_fix(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_npz(str(tmp_path / "missing"))
    with pytest.raises(BenchError, match="no \\*train\\*.npz"):
        load_npz(str(tmp_path))
    (tmp_path / "x_train.npz").write_bytes(b"garbage")
    (tmp_path / "x_test.npz").write_bytes(b"garbage")
    with pytest.raises(BenchError, match="not a readable .npz"):
        load_npz(str(tmp_path))


def test_imagefolder_resizes_and_reports_corrupt_images(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png")
    s = load_imagefolder(str(tmp_path), image_size=16)
    assert s.train.images.shape == (6, 16, 16, 3) and s.classes == ["cat", "dog"]
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"nope")
    with pytest.raises(BenchError, match="cannot read image .*broken.png"):
        load_imagefolder(str(tmp_path), image_size=16)


def test_torchvision_dataset_offline_points_to_local_formats(tmp_path):
    with pytest.raises(BenchError, match="--download when online.*--dataset npz"):
        load_cifar10(str(tmp_path), download=False)


def test_imagefolder_class_list_picks_a_sorted_subset(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n03", "n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / split / cls / "0.png")
    (tmp_path / "im2.txt").write_text("n03 third class\nn01 first class\n")
    s = load_imagefolder(str(tmp_path), image_size=8, class_list=str(tmp_path / "im2.txt"))
    assert s.classes == ["n01", "n03"] and len(s.train) == 2 and sorted(s.val.labels.tolist()) == [0, 1]
    (tmp_path / "bad.txt").write_text("n09\n")
    with pytest.raises(BenchError, match="have no folder.*first: n09"):
        load_imagefolder(str(tmp_path), image_size=8, class_list=str(tmp_path / "bad.txt"))


def test_results_name_a_folder_dataset_after_its_folder():
    from benchsuite.settings.config import DatasetSpec

    assert DatasetSpec("npz", "../data/cifar10").label == "cifar10"
    assert DatasetSpec("imagefolder", "/data/imagenet100/").label == "imagenet100"
    assert DatasetSpec("cifar10", "/root/torchvision").label == "cifar10"  # a named dataset keeps its name
    assert DatasetSpec("synthetic").label == "synthetic"


def _write_folder(root, sizes, rng):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_imagefolder_records_the_native_geometry_and_val_resize(tmp_path):
    _write_folder(tmp_path, [(120, 80), (80, 120)], np.random.default_rng(0))
    s = load_imagefolder(str(tmp_path), image_size=40, val_resize=48)
    # train: shorter side -> 40, centre crop 40; (width, height, sx, sy, left, top)
    np.testing.assert_allclose(s.train.native_geometry[0], [120, 80, 0.5, 0.5, 10, 0])
    np.testing.assert_allclose(s.train.native_geometry[1], [80, 120, 0.5, 0.5, 0, 10])
    # val: shorter side -> 48 (the papers' Resize(256)), centre crop 40 (CenterCrop(224))
    np.testing.assert_allclose(s.val.native_geometry[0], [120, 80, 0.6, 0.6, 16, 4])
    native = np.asarray(Image.open(tmp_path / "val" / "a" / "0.png").resize((72, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(s.val.images[0], native[4:44, 16:56])
    assert s.val.images.shape == (4, 40, 40, 3)
    kept = s.train.subset(np.array([1]))
    np.testing.assert_array_equal(kept.native_geometry, s.train.native_geometry[1:2])
    with pytest.raises(BenchError, match="val_resize 30 is smaller than image_size 40"):
        load_imagefolder(str(tmp_path), image_size=40, val_resize=30)


def test_dataset_cache_keeps_the_native_geometry(tmp_path):
    from benchsuite.settings.config import build_config
    from benchsuite.settings.registry import get_registry
    from benchsuite.stages import Stages

    _write_folder(tmp_path / "data", [(120, 80)], np.random.default_rng(0))
    config = build_config({"dataset": {"name": "imagefolder", "path": str(tmp_path / "data"),
                                       "options": {"image_size": 40}}, "device": "cpu"})
    fresh = Stages(config, get_registry(), tmp_path / "cache").splits()
    cached = Stages(config, get_registry(), tmp_path / "cache").splits()  # loaded from the stage cache
    np.testing.assert_array_equal(cached.train.native_geometry, fresh.train.native_geometry)
    np.testing.assert_array_equal(cached.val.native_geometry, fresh.val.native_geometry)
