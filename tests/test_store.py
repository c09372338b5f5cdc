"""The memory-mapped stage store (issue #15): maps, poisoned rows over the clean map, resumable decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchsuite.core.cache import array_digest
from benchsuite.core.errors import BenchError
from benchsuite.data import loaders
from benchsuite.data.store import digest, extract_npz_member, is_whole_file, load_splits, save_splits
from benchsuite.settings.registry import get_registry
from benchsuite.ssl.trainer import TrainConfig, pretrain


def _pipeline(tmp_path, dataset=None):
    from benchsuite.settings.config import build_config
    from benchsuite.stages import Stages

    dataset = dataset or {"name": "synthetic", "options": {"train_per_class": 12, "val_per_class": 4}}
    return Stages(build_config({"dataset": dataset, "device": "cpu"}), get_registry(), tmp_path / "cache")


def test_the_dataset_stage_loads_as_copy_on_write_maps_of_identical_content(tmp_path):
    fresh = _pipeline(tmp_path).splits()
    cached = _pipeline(tmp_path).splits()  # loaded from the stage
    for split in ("train", "val"):
        a, b = getattr(fresh, split), getattr(cached, split)
        assert isinstance(b.images, np.memmap) and b.images.mode == "c"
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    (stored,) = (tmp_path / "cache" / "dataset").glob("*/train_x.npy")
    before = stored.read_bytes()
    cached.train.images[:4] = 0  # a consumer writing into its array never reaches the cache
    assert stored.read_bytes() == before
    np.testing.assert_array_equal(_pipeline(tmp_path).splits().train.images, fresh.train.images)


def test_the_streamed_digest_is_the_array_digest_and_a_truncated_store_raises(tmp_path, tiny_splits):
    content = save_splits(tmp_path, tiny_splits)
    t, v = tiny_splits.train, tiny_splits.val
    assert content == array_digest(t.images, t.labels, v.images, v.labels, np.array(json.dumps(t.classes)))
    loaded = load_splits(tmp_path)
    np.testing.assert_array_equal(loaded.train.images, t.images)
    path = tmp_path / "train_x.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError):
        digest(path)
    with pytest.raises(ValueError):
        load_splits(tmp_path)


def test_a_poisoned_set_stores_only_the_changed_rows_over_the_clean_map(tmp_path):
    from benchsuite.stages import Cell

    pipeline = _pipeline(tmp_path)
    splits = pipeline.splits()
    cell = Cell("htba", (0,), 0.1, 0)
    expected = pipeline.attack(cell.attack).poison(splits.train, [0], 0.1, 0)
    changed = np.flatnonzero((expected.train.images != splits.train.images).reshape(len(splits.train), -1).any(1))
    assert 0 < len(changed) < len(splits.train) // 5
    for poisoning in (pipeline.poisoning(cell)[0], _pipeline(tmp_path).poisoning(cell)[0]):  # computed, loaded
        images = poisoning.train.images
        assert isinstance(images, np.memmap) and images.filename == splits.train.images.filename
        np.testing.assert_array_equal(images, expected.train.images)
        np.testing.assert_array_equal(poisoning.poison_mask, expected.poison_mask)
    (folder,) = (p for p in (tmp_path / "cache" / "poison").iterdir() if (p / "DONE").is_file())
    np.testing.assert_array_equal(np.load(folder / "index.npy"), changed)
    assert np.load(folder / "rows.npy").shape == (len(changed), *splits.train.images.shape[1:])
    np.testing.assert_array_equal(splits.train.images, _pipeline(tmp_path).splits().train.images)  # clean intact


def test_attacks_poison_a_stage_map_copy_on_write_as_they_poison_an_array(tmp_path):
    from benchsuite.data import ImageDataset

    pipeline = _pipeline(tmp_path)
    train = pipeline.splits().train
    before = np.array(train.images)
    memory = ImageDataset(before.copy(), train.labels, train.classes)
    for name, targets in (("htba", [0]), ("multi_target", [0, 1]), ("spectral", [0])):
        attack = pipeline.attack(name)
        mapped, copied = attack.poison(train, targets, 0.1, 0), attack.poison(memory, targets, 0.1, 0)
        np.testing.assert_array_equal(mapped.train.images, copied.train.images)
        assert not np.array_equal(mapped.train.images, before)
    assert is_whole_file(pipeline.attack("htba").poison(train, [0], 0.1, 0).train.images)  # no in-memory copy
    np.testing.assert_array_equal(train.images, before)
    np.testing.assert_array_equal(_pipeline(tmp_path).splits().train.images, before)


def _method():
    torch.manual_seed(0)
    registry = get_registry()
    return registry.get("ssl", "simclr")(registry.get("backbone", "resnet18")(32, width=8, stem_stride=2))


def test_training_on_a_memory_mapped_set_is_bit_identical_to_the_in_memory_array(tmp_path, tiny_splits):
    save_splits(tmp_path, tiny_splits)
    mapped = load_splits(tmp_path).train.images[:64]
    assert isinstance(mapped, np.memmap)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1)
    a = pretrain(_method(), np.array(mapped), cfg, seed=1, workdir=tmp_path / "memory")
    b = pretrain(_method(), mapped, cfg, seed=1, workdir=tmp_path / "mapped")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def _folder(root, n=7):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_a_killed_decode_resumes_with_only_the_remaining_chunks_and_identical_arrays(tmp_path, monkeypatch):
    _folder(tmp_path / "data")
    reference = loaders.load_imagefolder(str(tmp_path / "data"), image_size=16, decode_workers=1)
    monkeypatch.setattr(loaders, "DECODE_CHUNK", 3)  # 14 training images: 5 chunks
    decode, calls = loaders._decode_chunk, []

    def failing(folder, index, start, payload):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after two chunks
        calls.append(index)
        decode(folder, index, start, payload)

    monkeypatch.setattr(loaders, "_decode_chunk", failing)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        loaders.load_imagefolder(str(tmp_path / "data"), image_size=16, workdir=str(work), decode_workers=1)
    assert (work / "train.progress").read_text().split() == ["0", "1"]

    def counting(folder, index, start, payload):
        calls.append(index)
        decode(folder, index, start, payload)

    monkeypatch.setattr(loaders, "_decode_chunk", counting)
    resumed = loaders.load_imagefolder(str(tmp_path / "data"), image_size=16, workdir=str(work), decode_workers=1)
    assert calls[2:] == [2, 3, 4, 0, 1, 2, 3, 4]  # the training chunks left, then the validation ones
    assert isinstance(resumed.train.images, np.memmap)
    for got, want in ((resumed.train, reference.train), (resumed.val, reference.val)):
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.native_geometry, want.native_geometry)
        np.testing.assert_array_equal(got.labels, want.labels)
    assert sorted(p.name for p in work.iterdir()) == ["train.npy", "train_geometry.npy", "val.npy",
                                                       "val_geometry.npy"]


def test_a_process_pool_decodes_the_same_arrays(tmp_path, monkeypatch):
    _folder(tmp_path / "data", n=4)
    reference = loaders.load_imagefolder(str(tmp_path / "data"), image_size=16, decode_workers=1)
    monkeypatch.setattr(loaders, "DECODE_CHUNK", 2)
    pooled = loaders.load_imagefolder(str(tmp_path / "data"), image_size=16, workdir=str(tmp_path / "w"),
                                      decode_workers=2)
    np.testing.assert_array_equal(pooled.train.images, reference.train.images)
    np.testing.assert_array_equal(pooled.val.native_geometry, reference.val.native_geometry)


def test_a_bad_worker_count_is_one_line(monkeypatch):
    monkeypatch.setenv("BENCH_DECODE_WORKERS", "many")
    with pytest.raises(BenchError, match="BENCH_DECODE_WORKERS='many' is not a number"):
        loaders.worker_count()
    with pytest.raises(BenchError, match="must be at least 1"):
        loaders.worker_count(0)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_images_are_extracted_in_a_stream_into_a_map(tmp_path, save):
    x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    save(tmp_path / "d.npz", x=x, y=np.arange(50))
    mapped = extract_npz_member(tmp_path / "d.npz", "x", tmp_path / "x.npy")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, x)


def test_a_bad_image_in_a_pooled_decode_is_one_line(tmp_path, monkeypatch):
    _folder(tmp_path / "data", n=3)
    (tmp_path / "data" / "train" / "b" / "1.png").write_bytes(b"not a png")
    monkeypatch.setattr(loaders, "DECODE_CHUNK", 2)
    with pytest.raises(BenchError, match="cannot read image .*1.png"):
        loaders.load_imagefolder(str(tmp_path / "data"), image_size=16, workdir=str(tmp_path / "w"), decode_workers=2)
