"""Dataset loaders: the embedded generator, .npz files, ImageFolder trees and torchvision sets."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchsuite.api.data import ImageDataset, Splits, check_labels
from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.errors import BenchError
from benchsuite.data.store import decode_into, extract_npz_member, open_partial
from benchsuite.data.synthetic import make_synthetic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "benchsuite" / "data"


def limit_per_class(data: ImageDataset, limit: int | None, seed: int = 0) -> ImageDataset:
    """Keep at most ``limit`` random images per class (all when ``limit`` is None)."""
    if not limit:
        return data
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(data.labels == c))[:limit] for c in range(data.num_classes)]
    return data.subset(np.sort(np.concatenate(keep)))


def _center_square(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[:, top:top + s, left:left + s]


def _read_npz(path: Path, workdir: Path | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """x and y of an .npz; with ``workdir``, x is extracted there in a stream and memory-mapped."""
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise BenchError(f"{path} lacks arrays 'x' and 'y' (has {', '.join(d.files)}): "
                                 "save images as x (N,H,W,3 uint8) and labels as y")
            if workdir is None:
                return d["x"], d["y"]
            labels = d["y"]
        return extract_npz_member(path, "x", workdir / f"{split}.npy"), labels
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise BenchError(f"{path} is not a readable .npz file ({err}): re-create it with np.savez") from err


def _npz_file(root: Path, split: str) -> Path:
    names = {"train": ("train",), "val": ("val", "test")}[split]
    found = [p for p in sorted(root.glob("*.npz")) if any(n in p.stem for n in names)]
    if not found:
        raise BenchError(f"no *{names[0]}*.npz file in {root}: put <name>_train.npz and <name>_test.npz there")
    return found[0]


def load_npz(path: str | None = None, limit_train_per_class: int | None = None,
             limit_val_per_class: int | None = None, workdir: str | None = None) -> Splits:
    """A directory holding ``*train*.npz`` and ``*test*.npz`` (or ``*val*``), each with x and y.

    Class names come from ``classes.txt`` beside them (one per line) when present. ``workdir``: extract the
    images there as memory-mapped ``.npy`` files (the pipeline passes its stage folder) instead of into memory.
    """
    if not path:
        raise BenchError("the npz dataset needs a path: --data-path DIR (with *_train.npz, *_test.npz)")
    root = Path(path)
    if not root.is_dir():
        raise BenchError(f"dataset path {root} does not exist: pass the folder holding the .npz files")
    parts = {}
    for split in ("train", "val"):
        file = _npz_file(root, split)
        x, y = _read_npz(file, Path(workdir) if workdir else None, split)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise BenchError(f"x in {root} must be (N,H,W,3) uint8, got {x.dtype} {x.shape}: convert it")
        if len(x) == 0:
            name = {"train": "training", "val": "validation"}[split]
            raise BenchError(f"the {name} split {file} has no images: save at least one image per class in it")
        parts[split] = (_center_square(x), check_labels(y, str(file)))
    num_classes = int(max(parts["train"][1].max(), parts["val"][1].max())) + 1
    classes_file = root / "classes.txt"
    classes = (classes_file.read_text().split("\n") if classes_file.is_file() else [])
    classes = [c.strip() for c in classes if c.strip()] or [f"class_{i}" for i in range(num_classes)]
    train = ImageDataset(*parts["train"], classes)
    val = ImageDataset(*parts["val"], classes)
    return Splits(limit_per_class(train, limit_train_per_class), limit_per_class(val, limit_val_per_class))


def _read_image(path: Path, size: int, resize: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """Shorter side to ``resize``, centre crop ``size``; with the geometry row (see ImageDataset)."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = resize / min(img.size)
            w, h = max(resize, round(img.width * scale)), max(resize, round(img.height * scale))
            geometry = (img.width, img.height, w / img.width, h / img.height, (w - size) // 2, (h - size) // 2)
            img = img.resize((w, h), Image.Resampling.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8), geometry
    except (UnidentifiedImageError, OSError) as err:
        raise BenchError(f"cannot read image {path} ({err}): delete or replace the file") from err


DECODE_CHUNK = 256  # images per decoding job: the resume and progress granularity


def worker_count(workers: int | None = None) -> int:
    """Processes that decode images: ``workers``, else ``$BENCH_DECODE_WORKERS``, else every CPU."""
    if workers is None:
        env = os.environ.get("BENCH_DECODE_WORKERS", "")
        if env and not env.isdigit():
            raise BenchError(f"BENCH_DECODE_WORKERS={env!r} is not a number: set it to a process count, e.g. 8")
        workers = int(env) if env else (os.cpu_count() or 1)
    if workers < 1:
        raise BenchError(f"decode_workers {workers} must be at least 1: pass a process count")
    return workers


def _decode_chunk(folder: Path, index: int, start: int, payload: tuple[str, list[str], int, int]) -> None:
    """Decode one chunk of files into rows ``start...`` of the partial maps (a spawn pool worker)."""
    name, files, size, resize = payload
    images, geometry = open_partial(folder, name), open_partial(folder, f"{name}_geometry")
    for k, file in enumerate(files):
        images[start + k], geometry[start + k] = _read_image(Path(file), size, resize)
    images.flush()
    geometry.flush()


def _image_folder(root: Path, size: int, classes: list[str] | None, resize: int | None = None,
                  workdir: Path | None = None, workers: int = 1) -> ImageDataset:
    """Decode ``root/<class>/*`` into ``workdir/<root name>.npy`` (a temporary folder when None, then read
    into memory) with ``workers`` processes, resuming a decode a kill interrupted."""
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = classes or found
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        listed = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        files += [str(p) for p in listed]
        labels += [label] * len(listed)
    if not files:
        raise BenchError(f"no images found under {root}: expected {root}/<class>/<image>.png")
    if workdir is None:
        with tempfile.TemporaryDirectory() as tmp:
            data = _image_folder(root, size, classes, resize, Path(tmp), workers)
            return ImageDataset(np.array(data.images), data.labels, data.classes, np.array(data.native_geometry))
    name, resize = root.name, resize or size
    chunks = [(start, (name, files[start:start + DECODE_CHUNK], size, resize))
              for start in range(0, len(files), DECODE_CHUNK)]
    fingerprint = hashlib.blake2b("\0".join(files).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    arrays = decode_into(workdir, name, len(files), (size, size, 3), np.uint8, _decode_chunk, chunks,
                         extra={f"{name}_geometry": ((6,), "float64")}, workers=workers,
                         label=f"decoding {root.parent.name}/{name}", fingerprint=f"{fingerprint} {size} {resize}")
    return ImageDataset(arrays[name], np.asarray(labels), list(classes), arrays[f"{name}_geometry"])


def read_class_list(path: str) -> list[str]:
    """Class folder names from a text file, one per line (the first word: ``n01558993 robin`` works), sorted
    as the SSL-Backdoor file lists order them (e.g. the ImageNet-100 wnids)."""
    file = Path(path)
    if not file.is_file():
        raise BenchError(f"class list {file} not found: check dataset.options.class_list")
    names = sorted({line.split()[0] for line in file.read_text().splitlines() if line.strip()})
    if not names:
        raise BenchError(f"class list {file} is empty: one class folder name per line")
    return names


def load_imagefolder(path: str | None = None, image_size: int = 64, limit_train_per_class: int | None = None,
                     limit_val_per_class: int | None = None, class_list: str | None = None,
                     val_resize: int | None = None, workdir: str | None = None,
                     decode_workers: int | None = None) -> Splits:
    """``path/train/<class>/*`` and ``path/val/<class>/*``, resized (shorter side) and centre-cropped.

    ``class_list`` names the classes to use (ImageNet-100 out of a full ImageNet folder); default: every folder.
    ``val_resize``: the validation images' shorter side before the ``image_size`` centre crop (default
    ``image_size``; the papers' Resize(256) + CenterCrop(224) is 256). Both splits record their
    native geometry, with which HTBA's ``paste_space = "native"`` pastes before the resize.
    ``workdir``: decode into memory-mapped ``.npy`` files there, resumable (the pipeline passes its stage
    folder); ``decode_workers``: decoding processes (default ``$BENCH_DECODE_WORKERS``, else every CPU).
    """
    if not path:
        raise BenchError("the imagefolder dataset needs a path: --data-path DIR (with train/ and val/)")
    root = Path(path)
    val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise BenchError(f"{root} must contain train/<class>/ and val/<class>/ folders: check --data-path")
    if val_resize is not None and val_resize < image_size:
        raise BenchError(f"val_resize {val_resize} is smaller than image_size {image_size}: the centre crop "
                         "must fit in the resized image (the papers: val_resize = 256 for 224)")
    classes = read_class_list(class_list) if class_list else None
    if classes:
        missing = [c for c in classes if not (root / "train" / c).is_dir()]
        if missing:
            raise BenchError(f"{len(missing)} class(es) of {class_list} have no folder in {root / 'train'} "
                             f"(first: {missing[0]}): check the class list and --data-path")
    workers, folder = worker_count(decode_workers), Path(workdir) if workdir else None
    train = _image_folder(root / "train", image_size, classes, None, folder, workers)
    val = _image_folder(val_dir, image_size, train.classes, val_resize, folder, workers)
    return Splits(limit_per_class(train, limit_train_per_class), limit_per_class(val, limit_val_per_class))


def _torchvision(name: str, path: str | None, download: bool) -> Splits:
    from torchvision import datasets

    root = Path(path) if path else DEFAULT_DATA_ROOT
    try:
        if name == "cifar10":
            parts = [datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False)]
            arrays = [(p.data, np.asarray(p.targets)) for p in parts]
            classes = parts[0].classes
        else:
            parts = [datasets.STL10(str(root), split=s, download=download) for s in ("train", "test")]
            arrays = [(p.data.transpose(0, 2, 3, 1).copy(), p.labels) for p in parts]
            classes = parts[0].classes
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise BenchError(
            f"{name} not found under {root} ({err}): add --download when online, or use "
            f"--dataset npz --data-path DIR or --dataset imagefolder --data-path DIR"
        ) from err
    except OSError as err:  # no network while downloading
        raise BenchError(
            f"cannot download {name} ({err}): offline? use --dataset npz --data-path DIR "
            "or --dataset imagefolder --data-path DIR instead"
        ) from err
    return Splits(ImageDataset(*arrays[0], list(classes)), ImageDataset(*arrays[1], list(classes)))


def load_cifar10(path: str | None = None, download: bool = False, limit_train_per_class: int | None = None,
                 limit_val_per_class: int | None = None) -> Splits:
    """torchvision CIFAR-10 under ``path`` (default ~/.cache/benchsuite/data); downloads only if asked."""
    s = _torchvision("cifar10", path, download)
    return Splits(limit_per_class(s.train, limit_train_per_class), limit_per_class(s.val, limit_val_per_class))


def load_stl10(path: str | None = None, download: bool = False, limit_train_per_class: int | None = None,
               limit_val_per_class: int | None = None) -> Splits:
    """torchvision STL-10 (labelled train/test, 96 px); downloads only if asked."""
    s = _torchvision("stl10", path, download)
    return Splits(limit_per_class(s.train, limit_train_per_class), limit_per_class(s.val, limit_val_per_class))


def load_synthetic(train_per_class: int = 500, val_per_class: int = 100, image_size: int = 32,
                   num_classes: int = 10, generator_seed: int = 0) -> Splits:
    """The embedded procedurally generated default (see benchsuite.data.synthetic)."""
    return make_synthetic(train_per_class, val_per_class, image_size, generator_seed, num_classes)


@hookimpl
def benchsuite_datasets() -> dict[str, object]:
    return {"synthetic": load_synthetic, "npz": load_npz, "imagefolder": load_imagefolder,
            "cifar10": load_cifar10, "stl10": load_stl10}
