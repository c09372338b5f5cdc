"""Datasets: uint8 images with labels and class names."""

from benchsuite.data.dataset import ImageDataset, Splits

__all__ = ["ImageDataset", "Splits"]
