"""Attack contracts: a data attack poisons a training set, a model attack backdoors a clean encoder.

Every attack names the threat kind whose protocol runs it (``threat``) and carries a code ``version``
that enters the keys of the stages it computes: bump it when a change of the code changes its output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from benchsuite.api.data import ImageDataset

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn


@dataclass
class Poisoning:
    """A poisoned training set and the ground truth a defense is scored against."""

    train: ImageDataset
    poison_mask: np.ndarray  # (N,) bool, True where the image carries a trigger
    poison_target: np.ndarray  # (N,) int, the target of each poison, -1 for clean images
    boxes: np.ndarray  # (N, 4) x, y, w, h of the pasted trigger, -1 where none (or no box)
    triggers: dict[int, np.ndarray] = field(default_factory=dict)  # target -> trigger image

    @property
    def poison_indices(self) -> np.ndarray:
        return np.flatnonzero(self.poison_mask)


@dataclass
class PatchedSet:
    """Validation images with a target's trigger applied, and where it was put."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray  # (N, 4) x, y, w, h, or -1 rows for triggers without a box


@dataclass
class Backdoor:
    """What a model attack hands back: the backdoored encoder and what its evaluation and pictures need."""

    encoder: nn.Module
    triggers: dict[int, np.ndarray] = field(default_factory=dict)  # target -> trigger image (H, W, 3) uint8
    references: dict[int, np.ndarray] = field(default_factory=dict)  # target -> (R, H, W, 3) reference images
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch training statistics
    metrics: dict[str, Any] = field(default_factory=dict)  # small, JSON-able columns for the results rows
    warnings: list[str] = field(default_factory=list)  # shown in the run log and kept in the results


# a figure an attack or defense draws of itself: (file name, figure, caption)
NamedFigure = tuple[str, "Figure", str]


class Attack:
    """The part every attack shares: a name, a config dataclass, a patched validation set per target.

    Subclasses set ``name`` and ``Config``; ``patch_val`` must be deterministic for a seed.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""
    threat: ClassVar[str] = "data"  # the threat kind (protocol) that runs the attack
    version: ClassVar[int] = 0  # code version: enters the keys of the attack's stages

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def patch_val(self, val: ImageDataset, target: int, seed: int) -> PatchedSet:
        raise NotImplementedError

    def cell_targets(self, targets: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
        """The targets a grid cell given as ``targets`` attacks (a multi-target attack may widen one)."""
        return targets

    def extra_figures(self, poisoned: Callable[[], tuple[np.ndarray, np.ndarray]], title: str) -> list[NamedFigure]:
        """Pictures of the attack beyond the suite's trigger / poisoned / patched strips; ``poisoned()`` gives
        a sample of (poisoned, clean original) training images. None by default."""
        return []


class DataAttack(Attack):
    """An attack on the training data: it poisons a training set, the victim pretrains on it."""

    threat = "data"

    def poison(self, train: ImageDataset, targets: list[int], rate: float, seed: int) -> Poisoning:
        raise NotImplementedError

    def poison_count(self, labels: np.ndarray, target: int, rate: float) -> int:
        """How many images ``poison`` would poison for ``target`` at ``rate`` (default: a fraction of the target
        class, as HTBA); the grid refuses a cell where it is 0."""
        return int(rate * int((labels == target).sum()))


class ModelAttack(Attack):
    """An attack on the model: it fine-tunes a copy of a clean pre-trained encoder and publishes it.

    ``backdoor`` gets the clean encoder (never to be modified), the attacker's shadow images (unlabelled;
    the labels are there so that reference images of a target class can be drawn) and returns a
    :class:`Backdoor`. Deterministic for a seed on CPU.
    """

    threat = "model"

    def backdoor(self, clean: nn.Module, shadow: ImageDataset, targets: list[int], seed: int,
                 context: Any) -> Backdoor:
        raise NotImplementedError

    def shadow_indices(self, n_train: int, seed: int) -> np.ndarray:
        """The training-split images the attacker uses as shadow data (default: all of them)."""
        return np.arange(n_train)
