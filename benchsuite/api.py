"""The contracts a plugin implements: attacks, defenses and the results they hand back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from benchsuite.data import ImageDataset
from benchsuite.errors import BenchError
from benchsuite.typed import coerce, field_types

if TYPE_CHECKING:
    from torch import nn

    from benchsuite.ssl.base import SSLMethod


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
    """Build a config dataclass from ``options``, refusing unknown keys with the known ones and values of the
    wrong type (``trigger_size = "abc"``) by name."""
    known = field_types(config_cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BenchError(
            f"unknown option(s) {', '.join(unknown)} for {owner}: known are {', '.join(known)}"
        )
    return config_cls(**{k: coerce(known[k], v, f"{owner}.{k}") for k, v in options.items()})


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

    def poison_count(self, labels: np.ndarray, target: int, rate: float) -> int:
        """How many images ``poison`` would poison for ``target`` at ``rate`` (default: a fraction of the target
        class, as HTBA); the grid refuses a cell where it is 0."""
        return int(rate * int((labels == target).sum()))

    def cell_targets(self, targets: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
        """The targets a grid cell given as ``targets`` poisons (a multi-target attack may widen one)."""
        return targets


DefenseKind = Literal["none", "filter", "training", "model", "composed"]


@dataclass
class Detection:
    """What a filter defense returns: a per-image score and the images to remove."""

    scores: np.ndarray  # (N,) higher = more likely poisoned; the ranking behind top-k accuracy
    remove: np.ndarray  # (N,) bool, the images the suite drops before retraining
    windows: np.ndarray | None = None  # (N, 4) x, y, w, h of the located trigger, -1 rows where none
    extras: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (small)
    # the filter's decision on new (N, H, W, 3) uint8 images, as ``remove`` on the training set; the suite
    # scores its pasting control with it right after ``detect`` (not cached). None: cannot judge new images
    flag: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)


@dataclass
class Verdict:
    """What a model defense says of one encoder."""

    trojaned: bool
    anomaly_index: float  # the statistic behind the verdict (SSL-Cleanse: MAD anomaly index)
    flagged: int | None = None  # the flagged cluster or class, if any
    extras: dict[str, Any] = field(default_factory=dict)  # small, JSON-able


class Defense:
    """A defense of one kind.

    - ``none``: evaluate the encoder trained on the poisoned set as it is;
    - ``filter``: ``detect(ctx)`` returns a :class:`Detection`; the suite retrains on the kept images;
    - ``training``: ``wrap_method(method)`` changes SSL pretraining, which runs on the poisoned set;
    - ``model``: ``inspect(ctx)`` gives a :class:`Verdict` on a trained encoder and
      ``mitigate(ctx, verdict)`` may return a repaired backbone.

    ``filter+training`` pairs compose (:class:`ComposedDefense`): filter, then retrain with the
    training-time defense on the kept images.
    """

    name: ClassVar[str]
    kind: ClassVar[DefenseKind]
    Config: ClassVar[type]
    description: ClassVar[str] = ""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def detect(self, ctx: Any) -> Detection:
        raise NotImplementedError(f"defense {self.name} ({self.kind}) does not detect poisons")

    def wrap_method(self, method: SSLMethod) -> SSLMethod:
        raise NotImplementedError(f"defense {self.name} ({self.kind}) does not change pretraining")

    def inspect(self, ctx: Any) -> Verdict:
        raise NotImplementedError(f"defense {self.name} ({self.kind}) does not inspect encoders")

    def inspect_options(self) -> Any:
        """What of the config ``inspect`` reads (its cache key): all of it unless a defense says less, so
        that changing only the mitigation options reuses the verdicts."""
        return self.config

    def mitigate(self, ctx: Any, verdict: Verdict) -> nn.Module | None:
        """A repaired copy of ``ctx.encoder``, or None to keep the encoder as it is."""
        return None


class ComposedDefense(Defense):
    """A filter defense followed by a training-time defense on the images it keeps."""

    kind = "composed"

    def __init__(self, filter_defense: Defense, training_defense: Defense) -> None:
        if filter_defense.kind != "filter" or training_defense.kind != "training":
            raise BenchError(f"cannot compose {filter_defense.name}+{training_defense.name}: a composed defense "
                             f"is a filter then a training-time defense, got {filter_defense.kind} then "
                             f"{training_defense.kind}")
        self.filter = filter_defense
        self.training = training_defense
        self.name = f"{filter_defense.name}+{training_defense.name}"  # type: ignore[misc]
        self.config = (filter_defense.config, training_defense.config)
