"""The one dataset shape every stage of the suite consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchsuite.core.errors import BenchError


def check_labels(labels: np.ndarray, where: str = "the dataset") -> np.ndarray:
    """``labels`` as int64 class indices, refusing what a cast would mangle (text, one-hot, fractions)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        hint = "one-hot? save y.argmax(1)" if labels.ndim == 2 else "save one class index per image"
        raise BenchError(f"labels of {where} must be one class index per image, got shape {labels.shape}: {hint}")
    integral = labels.dtype.kind in "iu" or (
        labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels) & (labels == np.round(labels)))))
    if not integral:
        odd = labels[labels != np.round(labels)] if labels.dtype.kind == "f" else labels
        example = f" (e.g. {odd.tolist()[0]!r})" if len(odd) else ""
        raise BenchError(f"labels of {where} must be integer class indices, got {labels.dtype}{example}: "
                         "save them as integers 0..C-1, with the class names in classes.txt")
    return labels.astype(np.int64)


@dataclass
class ImageDataset:
    """Images as an (N, H, W, 3) uint8 array, integer labels and the class names.

    Loaded from the stage cache, ``images`` is a copy-on-write ``np.memmap`` (:mod:`benchsuite.data.store`):
    index it by batch (``np.array(images)`` would copy all of it into memory).

    ``native_geometry`` (loaders that resize, e.g. imagefolder): (N, 6) float, per image the source
    ``width, height, sx, sy, left, top``; a source pixel edge x lands at ``x * sx - left`` in the
    stored image (y: ``y * sy - top``). Attacks paste in the source space with it (``paste_space``).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    native_geometry: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise BenchError(
                f"images must be an (N, H, W, 3) uint8 array, got {self.images.dtype} "
                f"{self.images.shape}: convert the data to RGB uint8"
            )
        if self.images.shape[1] != self.images.shape[2]:
            raise BenchError(f"images must be square, got {self.images.shape[1]}x{self.images.shape[2]}: "
                             "centre-crop them (the npz and imagefolder loaders do)")
        self.labels = check_labels(self.labels)
        if len(self.labels) != len(self.images):
            raise BenchError(
                f"{len(self.images)} images but {len(self.labels)} labels: fix the dataset file"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise BenchError(
                f"labels must lie in [0, {len(self.classes)}), got "
                f"[{self.labels.min()}, {self.labels.max()}]: fix the labels or the class list"
            )
        if self.native_geometry is not None:
            self.native_geometry = np.asarray(self.native_geometry, dtype=np.float64)
            if self.native_geometry.shape != (len(self.images), 6):
                raise BenchError(f"native_geometry must be ({len(self.images)}, 6), got "
                                 f"{self.native_geometry.shape}: one (width, height, sx, sy, left, top) row per image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        """Side of the (square) images; non-square data are centre-cropped on load."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: np.ndarray) -> ImageDataset:
        """A new dataset holding the given rows."""
        geometry = None if self.native_geometry is None else self.native_geometry[indices]
        return ImageDataset(self.images[indices], self.labels[indices], list(self.classes), geometry)


@dataclass
class Splits:
    """A train and a validation split with the same classes."""

    train: ImageDataset
    val: ImageDataset

    def __post_init__(self) -> None:
        for name, split in (("training", self.train), ("validation", self.val)):
            if len(split) == 0:
                raise BenchError(f"the {name} split has no images: every split needs at least one image per "
                                 "class it is scored on; check the dataset files and limit_*_per_class")
        if self.train.image_size != self.val.image_size:
            raise BenchError(f"{self.train.image_size}px training images but {self.val.image_size}px validation "
                             "images: resize both splits to one image size")
        if self.train.num_classes < 2:
            raise BenchError(f"the dataset has one class ({', '.join(map(str, self.train.classes))}): a backdoor "
                             "flips images of other classes to a target, so give at least two class folders")
        if list(self.train.classes) != list(self.val.classes):
            raise BenchError("the training and validation splits name different classes: give both the same list")

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def check_target(self, target: int) -> None:
        """Raise a one-line error if ``target`` is not a class index of this dataset."""
        if not 0 <= target < self.train.num_classes:
            raise BenchError(
                f"target class {target} is out of range: this dataset has classes "
                f"0..{self.train.num_classes - 1} ({', '.join(self.classes)})"
            )
