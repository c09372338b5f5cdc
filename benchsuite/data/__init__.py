"""Datasets: uint8 images with labels and class names."""

from benchsuite.api.data import ImageDataset, Splits

__all__ = ["ImageDataset", "Splits"]
