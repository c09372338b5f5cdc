"""What the suite hands a defense or a model attack when it runs one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchsuite.api.data import ImageDataset

if TYPE_CHECKING:
    import torch


# torchvision's ImageNet statistics: the default normalisation of every encoder the suite trains
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DefenseContext:
    """What a filter or encoder-level defense sees: its images and the encoder under suspicion.

    The ground truth (which images are poisoned) is deliberately absent.
    """

    images: np.ndarray
    encoder: torch.nn.Module
    features: np.ndarray  # encoder features of ``images``
    num_classes: int
    seed: int
    device: torch.device
    workdir: Path
    # the normalisation the encoder was trained with (``train.augment.mean / std``): every input a defense
    # passes through ``encoder`` must be normalised with it
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # the class of each image, given to encoder-level detectors only (the defender's own clean data) for a
    # class-balanced draw such as DECREE's shadow set; None where the defense sees no labels (filters)
    labels: np.ndarray | None = None
    # a new, untrained encoder of the recipe's architecture (what a repairer distils into); None where the
    # suite has no recipe to build one from
    new_encoder: Callable[[], torch.nn.Module] | None = None


@dataclass
class AttackContext:
    """What a model attack gets besides the clean encoder and its shadow images."""

    device: torch.device
    workdir: Path  # the stage's folder: logs, pictures
    mean: tuple[float, float, float]  # the normalisation the clean encoder was trained with
    std: tuple[float, float, float]
    # labelled images of the downstream task, where the reference images of a target class come from (the
    # attacker holds a few inputs of the target class); None: the shadow set's own labels
    references: ImageDataset | None = None
