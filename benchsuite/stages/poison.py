"""The poison stage: a data attack's poisoned training set of one cell."""

from __future__ import annotations

import numpy as np

from benchsuite.api import DataAttack, ImageDataset, Poisoning
from benchsuite.core.cache import code_versions, file_inputs, stable_hash
from benchsuite.core.errors import BenchError
from benchsuite.data.store import open_rows, save_rows
from benchsuite.stages.base import Cell, StageBase, save_arrays


class PoisonStage(StageBase):
    """Key: the data, the attack (name, resolved config, the files it names, code version), the cell."""

    POISON_VERSION = 0

    def attack_inputs(self, name: str) -> tuple[dict[str, str], ...]:
        """The content digests of the files an attack's options name (trigger images); () when none."""
        if name not in self._attack_inputs:
            found = file_inputs(self.attack(name).config)
            self._attack_inputs[name] = (found,) if found else ()
        return self._attack_inputs[name]

    def attack_files_and_version(self, name: str) -> tuple:
        """What identifies an attack in a key besides its name and resolved config: the files it names and
        its code version (after the cell's fields, where the keys made before versions existed had them)."""
        return (*self.attack_inputs(name), *code_versions(attack=self.attack(name).version))

    def data_attack(self, name: str) -> DataAttack:
        attack = self.attack(name)
        if not isinstance(attack, DataAttack):
            raise BenchError(f"attack {name} is a {attack.threat} attack, not a data attack: it has no poisoned "
                             "training set")
        return attack

    def poison_key(self, cell: Cell) -> str:
        attack = self.attack(cell.attack)
        return stable_hash("poison", self.dataset_key, cell.attack, attack.config, cell.targets, cell.rate, cell.seed,
                           *self.attack_files_and_version(cell.attack), *code_versions(stage=self.POISON_VERSION))

    def poisoning(self, cell: Cell) -> tuple[Poisoning, str]:
        """The poisoned training set of a cell (cached) and its key."""
        splits = self.splits()
        for t in cell.targets:
            splits.check_target(t)
        attack = self.data_attack(cell.attack)
        key = self.poison_key(cell)
        folder = self.cache.dir("poison", key)

        def load() -> Poisoning:
            if (folder / "poison.npz").is_file():  # cached before the memory-mapped store (issue #15)
                with np.load(folder / "poison.npz") as d:
                    triggers = {int(k.split("_")[1]): d[k] for k in d.files if k.startswith("trigger_")}
                    train = ImageDataset(d["images"], splits.train.labels, splits.classes)
                    return Poisoning(train, d["mask"], d["poison_target"], d["boxes"], triggers)
            # the clean training map with the stored poisoned rows over it: no copy of the training set
            train = ImageDataset(open_rows(folder, splits.train.images), splits.train.labels, splits.classes)
            with np.load(folder / "poison-meta.npz") as d:
                triggers = {int(k.split("_")[1]): d[k] for k in d.files if k.startswith("trigger_")}
                return Poisoning(train, d["mask"], d["poison_target"], d["boxes"], triggers)

        def compute() -> Poisoning:
            p = attack.poison(splits.train, list(cell.targets), cell.rate, cell.seed)
            changed = save_rows(folder, splits.train.images, p.train.images)
            save_arrays(folder / "poison-meta.npz", mask=p.poison_mask, poison_target=p.poison_target,
                        boxes=p.boxes, **{f"trigger_{t}": trig for t, trig in p.triggers.items()})
            self.cache.mark_done("poison", key, {"cell": cell.label, "poisons": int(p.poison_mask.sum()),
                                                 "changed_rows": len(changed)})
            del p  # the attack's full copy: what is returned maps the clean set
            return load()

        return self.cache.run("poison", key, load, compute), key
