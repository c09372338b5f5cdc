"""The one dataset shape every stage of the suite consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchsuite.errors import BenchError


@dataclass
class ImageDataset:
    """Images as an (N, H, W, 3) uint8 array, integer labels and the class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise BenchError(
                f"images must be an (N, H, W, 3) uint8 array, got {self.images.dtype} "
                f"{self.images.shape}: convert the data to RGB uint8"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != len(self.images):
            raise BenchError(
                f"{len(self.images)} images but {len(self.labels)} labels: fix the dataset file"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise BenchError(
                f"labels must lie in [0, {len(self.classes)}), got "
                f"[{self.labels.min()}, {self.labels.max()}]: fix the labels or the class list"
            )

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
        return ImageDataset(self.images[indices], self.labels[indices], list(self.classes))


@dataclass
class Splits:
    """A train and a validation split with the same classes."""

    train: ImageDataset
    val: ImageDataset

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
