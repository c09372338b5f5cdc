"""Defense contracts, one kind per way of defending; each kind is run by the protocol of that name.

- ``none``: evaluate the encoder under threat as it is (the "w/o Defense" column);
- ``filter``: ``detect(ctx)`` returns a :class:`Detection`; the suite retrains on the kept images;
- ``training``: ``wrap_method(method)`` changes SSL pretraining on the poisoned set;
- ``detector``: ``inspect(ctx)`` returns a :class:`Verdict` on an encoder; a detector that also defines
  ``repair`` has the encoder it repairs evaluated (SSL-Cleanse), otherwise the encoder as it is;
- ``repairer``: ``repair(ctx, None)`` returns a repaired copy of the encoder, without a verdict.

A plugin may add a kind together with its protocol (hook ``benchsuite_protocols``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from benchsuite.core.errors import BenchError

if TYPE_CHECKING:
    from torch import nn

    from benchsuite.api.attacks import NamedFigure
    from benchsuite.api.context import DefenseContext
    from benchsuite.api.ssl import SSLMethod


@dataclass
class Detection:
    """What a filter defense returns: a per-image score and the images to remove."""

    scores: np.ndarray  # (N,) higher = more likely poisoned; the ranking behind top-k accuracy
    remove: np.ndarray  # (N,) bool, the images the suite drops before retraining
    windows: np.ndarray | None = None  # (N, 4) x, y, w, h of the located trigger, -1 rows where none
    extras: dict[str, Any] = field(default_factory=dict)  # anything else worth keeping (small)
    # how many images the defense actually scored (a search may score a subset and rank the rest by a fill
    # value); top-k metrics beyond it are NaN. None: every image was scored
    n_scored: int | None = None
    # the filter's decision on new (N, H, W, 3) uint8 images, as ``remove`` on the training set; the suite
    # scores its pasting control with it right after ``detect`` (not cached). None: cannot judge new images
    flag: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)


@dataclass
class ReversedTrigger:
    """A trigger a detector reconstructed: mask (H, W) and pattern (3, H, W), both float in [0, 1].

    The blend is ``(1 - mask) * x + mask * pattern`` on images in [0, 1]; the suite draws it beside the real
    trigger and scores their overlap (``benchsuite/eval/reversed_trigger.py``)."""

    mask: np.ndarray
    pattern: np.ndarray


@dataclass
class Verdict:
    """What a detector says of one encoder: the statistic behind it, the threshold it was held against."""

    trojaned: bool
    score: float  # the detector's statistic (SSL-Cleanse: MAD anomaly index; DECREE: PL1)
    threshold: float = float("nan")  # the value ``score`` was compared with
    flagged: int | None = None  # the flagged cluster or class, if any
    extras: dict[str, Any] = field(default_factory=dict)  # small, JSON-able


class Defense:
    """A defense of one ``kind`` (see the module docstring); subclasses set ``name``, ``kind``, ``Config``."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""
    version: ClassVar[int] = 0  # code version: enters the keys of the defense's stages
    score_name: ClassVar[str] = "score"  # the results column of a detector's score

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @property
    def parts(self) -> tuple[Defense, ...]:
        """The defenses this one is made of (itself, unless composed)."""
        return (self,)

    def detect(self, ctx: DefenseContext) -> Detection:
        raise NotImplementedError(f"defense {self.name} ({self.kind}) does not detect poisons")

    def wrap_method(self, method: SSLMethod) -> SSLMethod:
        raise NotImplementedError(f"defense {self.name} ({self.kind}) does not change pretraining")

    def inspect(self, ctx: DefenseContext) -> Verdict:
        raise NotImplementedError(f"defense {self.name} ({self.kind}) does not inspect encoders")

    def inspect_options(self) -> Any:
        """What of the config ``inspect`` reads (its cache key): all of it unless a defense says less, so
        that changing only the repair options reuses the verdicts."""
        return self.config

    def repair(self, ctx: DefenseContext, verdict: Verdict | None) -> nn.Module | None:
        """A repaired copy of ``ctx.encoder``, or None to keep the encoder as it is (a benign verdict)."""
        return None

    @classmethod
    def repairs(cls) -> bool:
        return cls.repair is not Defense.repair

    def reversed_trigger(self, verdict: Verdict) -> ReversedTrigger | None:
        """The trigger a verdict reconstructed, if the detector reconstructs one."""
        return None

    def extra_figures(self, verdict: Verdict, title: str) -> list[NamedFigure]:
        """Pictures a detector draws of a verdict (beyond the reversed-vs-true trigger the suite draws)."""
        return []


class ComposedDefense(Defense):
    """A filter defense followed by a training-time defense on the images it keeps."""

    kind = "filter"

    def __init__(self, filter_defense: Defense, training_defense: Defense) -> None:
        if filter_defense.kind != "filter" or training_defense.kind != "training":
            raise BenchError(f"cannot compose {filter_defense.name}+{training_defense.name}: a composed defense "
                             f"is a filter then a training-time defense, got {filter_defense.kind} then "
                             f"{training_defense.kind}")
        self.filter = filter_defense
        self.training = training_defense
        self.name = f"{filter_defense.name}+{training_defense.name}"  # type: ignore[misc]
        self.config = (filter_defense.config, training_defense.config)
        self.version = filter_defense.version  # type: ignore[misc]

    @property
    def parts(self) -> tuple[Defense, ...]:
        return (self.filter, self.training)

    def detect(self, ctx: DefenseContext) -> Detection:
        return self.filter.detect(ctx)
