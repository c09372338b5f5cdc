"""Multi-target HTBA (PoisonCAM section 5.6, spec section 2): one trigger per target in one poisoned set.

Every (target, trigger) pair is generated as a single-target HTBA attack (spec 1.3-1.4), each
target poisoned at ``rate`` (a fraction of that target's class, as HTBA); the poisons of one pair
are exactly those HTBA would choose for that target alone. Only target-class images are poisoned
and the targets are distinct, so no image carries two triggers. Each target gets its own patched
validation set with its own trigger.

A cell with one target is widened to ``n_targets`` consecutive classes (t, t+1, ... mod the
number of classes), or to the explicit ``targets``; a cell given as ``--targets 0+3+5`` is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from benchsuite.api import Poisoning
from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.data import ImageDataset
from benchsuite.errors import BenchError
from benchsuite.hookspecs import hookimpl
from benchsuite.triggers import make_trigger, trigger_side


@dataclass(frozen=True)
class MultiTargetConfig(HTBAConfig):
    n_targets: int = 3  # targets of a cell given with one target (PoisonCAM: 2 and 3)
    targets: tuple[int, ...] = ()  # explicit targets for single-target cells, e.g. (0, 3, 5); overrides n_targets
    # target class -> trigger image path (TOML keys are strings, e.g. {"26" = "trigger_10.png"});
    # targets not listed use ``trigger``, which must then be 'random' (seeded per target) to stay distinct
    trigger_files: dict[str, str] = field(default_factory=dict)


class MultiTarget(HTBA):
    name = "multi_target"
    Config = MultiTargetConfig
    description = "HTBA with several (target, trigger) pairs in one poisoned set"

    def cell_targets(self, targets: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
        for t in targets:  # before widening, which would wrap an out-of-range class around
            if not 0 <= t < num_classes:
                raise BenchError(f"target class {t} is out of range: this dataset has classes 0..{num_classes - 1}")
        if len(targets) == 1:
            if self.config.targets:
                targets = tuple(int(t) for t in self.config.targets)
            else:
                n = int(self.config.n_targets)
                if not 1 <= n <= num_classes:
                    raise BenchError(f"multi_target n_targets={n} must be in [1, {num_classes}] (the number "
                                     "of classes): set attack.multi_target.n_targets")
                targets = tuple((targets[0] + i) % num_classes for i in range(n))
        if len(set(targets)) != len(targets):
            raise BenchError(f"multi_target targets {targets} repeat a class: give distinct targets, e.g. 0+3+5")
        return targets

    def trigger_for(self, target: int, image_size: int) -> np.ndarray:
        side = trigger_side(self.config.trigger_size, image_size)
        spec = self.config.trigger_files.get(str(target), self.config.trigger)
        return make_trigger(spec, side, [self.config.trigger_seed, target])

    def poison(self, train: ImageDataset, targets: list[int], rate: float, seed: int) -> Poisoning:
        targets = [int(t) for t in targets]
        if len(set(targets)) != len(targets):
            raise BenchError(f"multi_target targets {targets} repeat a class: give distinct targets, e.g. 0+3+5")
        shared = [t for t in targets if str(t) not in self.config.trigger_files]
        if len(shared) > 1 and self.config.trigger != "random":
            raise BenchError(f"targets {shared} would share the trigger file {self.config.trigger}: give each "
                             "its own with attack.multi_target.trigger_files, or use trigger='random'")
        mask = np.zeros(len(train), dtype=bool)
        poison_target = np.full(len(train), -1, dtype=np.int64)
        boxes = np.full((len(train), 4), -1, dtype=np.int64)
        triggers: dict[int, np.ndarray] = {}
        current = train
        for t in targets:
            # each pair is HTBA on its own target class; the classes are disjoint, so pastes never overlap
            pair = super().poison(current, [t], rate, seed)
            mask |= pair.poison_mask
            poison_target[pair.poison_mask] = t
            boxes[pair.poison_mask] = pair.boxes[pair.poison_mask]
            triggers.update(pair.triggers)
            current = pair.train
        return Poisoning(current, mask, poison_target, boxes, triggers)


@hookimpl
def benchsuite_attacks() -> list[type[HTBA]]:
    return [MultiTarget]
