"""Multi-target HTBA (PoisonCAM section 5.6, spec section 2): one trigger per target in one poisoned set.

Every (target, trigger) pair is generated as a single-target HTBA attack (spec 1.3-1.4), each
target poisoned at ``rate`` (a fraction of that target's class, as HTBA); the poisons of one pair
are exactly those HTBA would choose for that target alone. Only target-class images are poisoned
and the targets are distinct, so no image carries two triggers. Each target gets its own patched
validation set with its own trigger.

A cell with one target is widened to ``n_targets`` consecutive classes (t, t+1, ... mod the
number of classes), or to the explicit ``targets``; a cell given as ``--targets 0+3+5`` is kept.

Triggers must differ between the targets (issue #14): by default each target gets its own generated
glyph (benchsuite.triggers.glyphs), distinct in structure and colour; ``trigger_dir`` gives class k the k-th
PNG of a folder (HTBA's trigger_10.png ... trigger_19.png), ``trigger_files`` one file per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from benchsuite.api import Poisoning
from benchsuite.api.hookspecs import hookimpl
from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.core.cache import added_field
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Sized
from benchsuite.data import ImageDataset
from benchsuite.triggers import GENERATED, glyph_number, make_trigger
from benchsuite.triggers.glyphs import GLYPHS


@dataclass(frozen=True)
class MultiTargetConfig(HTBAConfig):
    # 'glyph': a structured pattern per target, distinct by construction (papers: an HTBA PNG per target, spec 2:
    # trigger_dir / trigger_files); 'random' (HTBA-style blobs seeded per target) was the default before issue #14;
    # a single PNG path is refused for several targets
    trigger: str = "glyph"
    n_targets: Sized = 3  # targets of a cell given with one target (PoisonCAM: 2 and 3)
    targets: tuple[int, ...] = ()  # explicit targets for single-target cells, e.g. (0, 3, 5); overrides n_targets
    # target class -> trigger image path (TOML keys are strings, e.g. {"26" = "trigger_10.png"});
    # targets not listed use ``trigger_dir`` or else ``trigger``, which must then be generated to stay distinct
    trigger_files: dict[str, str] = field(default_factory=dict)
    # a folder of PNGs: class k gets the k-th by file name (HTBA's trigger_10.png ... trigger_19.png -> classes 0-9)
    trigger_dir: str = added_field("")


class MultiTarget(HTBA):
    name = "multi_target"
    Config = MultiTargetConfig
    description = "HTBA with several (target, trigger) pairs in one poisoned set"

    def __init__(self, config: MultiTargetConfig | None = None) -> None:
        super().__init__(config)
        files = dict(self.config.trigger_files)
        if self.config.trigger_dir:  # resolved into trigger_files, so the files key the cache by content
            found = _dir_triggers(Path(self.config.trigger_dir))
            files = {**{str(k): str(path) for k, path in enumerate(found)}, **files}
            self.config = replace(self.config, trigger_files=files)
        for target, path in files.items():  # checked here so a run fails before any stage
            if not Path(path).is_file():
                raise BenchError(f"attack {self.name}: trigger file {path} of target {target} not found: fix "
                                 "attack.multi_target.trigger_files")

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

    def trigger_of_side(self, target: int, side: int) -> np.ndarray:
        spec = self.config.trigger_files.get(str(target))
        if spec is None:
            if self.config.trigger_dir:
                raise BenchError(f"target class {target} has no trigger in trigger_dir {self.config.trigger_dir} "
                                 "(class k takes its k-th PNG by name): add PNGs, pick lower targets, or map the "
                                 "class in attack.multi_target.trigger_files")
            spec = self.config.trigger
        return make_trigger(spec, side, [self.config.trigger_seed, target])

    def poison(self, train: ImageDataset, targets: list[int], rate: float, seed: int) -> Poisoning:
        targets = [int(t) for t in targets]
        if len(set(targets)) != len(targets):
            raise BenchError(f"multi_target targets {targets} repeat a class: give distinct targets, e.g. 0+3+5")
        shared = [t for t in targets if str(t) not in self.config.trigger_files]
        if len(shared) > 1 and self.config.trigger not in GENERATED:
            raise BenchError(f"targets {shared} would share the trigger file {self.config.trigger}: give each "
                             "its own with --trigger-dir or attack.multi_target.trigger_files, or use --trigger glyph")
        if self.config.trigger == "glyph":
            glyphs, n = [glyph_number([self.config.trigger_seed, t]) for t in shared], len(GLYPHS)
            if len(set(glyphs)) != len(glyphs):
                raise BenchError(f"targets {shared} would share a glyph trigger (glyphs {glyphs}: class t takes "
                                 f"glyph (trigger_seed + t) mod {n}): pick targets that differ mod {n}, or give "
                                 "attack.multi_target.trigger_files or --trigger-dir")
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


def _dir_triggers(folder: Path) -> list[Path]:
    """The PNGs of a trigger folder, by file name."""
    if not folder.is_dir():
        raise BenchError(f"attack multi_target: trigger_dir {folder} is not a folder: give --trigger-dir a folder "
                         "of PNGs (HTBA's: SSL-Backdoor poison-generation/triggers/)")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not found:
        raise BenchError(f"attack multi_target: trigger_dir {folder} holds no .png file: give a folder of "
                         "trigger PNGs (HTBA's: SSL-Backdoor poison-generation/triggers/)")
    return found


@hookimpl
def benchsuite_attacks() -> list[type[HTBA]]:
    return [MultiTarget]
