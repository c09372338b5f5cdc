"""The contracts a plugin implements: attacks, defenses and the results they hand back."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np

from benchsuite.data import ImageDataset
from benchsuite.errors import BenchError


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


def config_from_options(config_cls: type, options: dict[str, Any], owner: str) -> Any:
    """Build a config dataclass from ``options``, refusing unknown keys with the known ones."""
    known = {f.name: f for f in fields(config_cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BenchError(
            f"unknown option(s) {', '.join(unknown)} for {owner}: known are {', '.join(known)}"
        )
    return config_cls(**options)


class Attack:
    """An attack poisons a training set and builds a patched validation set per target.

    Subclasses set ``name`` and ``Config`` (a dataclass) and implement both methods;
    both must be deterministic for a seed.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def poison(self, train: ImageDataset, targets: list[int], rate: float, seed: int) -> Poisoning:
        raise NotImplementedError

    def patch_val(self, val: ImageDataset, target: int, seed: int) -> PatchedSet:
        raise NotImplementedError


DefenseKind = Literal["none", "filter", "training", "model"]


@dataclass
class Detection:
    """What a filter defense returns: a per-image score and the images to remove."""

    scores: np.ndarray  # (N,) higher = more likely poisoned; the ranking behind top-k accuracy
    remove: np.ndarray  # (N,) bool, the images the suite drops before retraining
    windows: np.ndarray | None = None  # (N, 4) x, y, w, h of the located trigger, -1 rows where none
    extras: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (small)


class Defense:
    """A defense of one kind.

    - ``none``: evaluate the encoder trained on the poisoned set as it is;
    - ``filter``: ``detect(ctx)`` returns a :class:`Detection`; the suite retrains on the kept images;
    - ``training``: changes SSL pretraining (``wrap_method``) and trains on the poisoned set;
    - ``model``: inspects (and may repair) the trained encoder.
    """

    name: ClassVar[str]
    kind: ClassVar[DefenseKind]
    Config: ClassVar[type]
    description: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def detect(self, ctx: Any) -> Detection:
        raise NotImplementedError
