"""The patched stage: the validation set with one target's trigger on every image."""

from __future__ import annotations

import numpy as np

from benchsuite.api import PatchedSet
from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.data.store import open_array, save_array
from benchsuite.stages.base import StageBase, save_arrays


class PatchedStage(StageBase):
    """The validation split of the downstream dataset (the pre-training one unless ``[downstream]``) with a
    target's trigger on every image. Key: that data, the attack's identity (name, resolved config, files,
    code version), target and seed."""

    PATCHED_VERSION = 0

    def patched_key(self, attack_name: str, target: int, seed: int) -> str:
        attack = self.attack(attack_name)
        return stable_hash("patched", self.downstream_key, attack_name, attack.config, target, seed,
                           *self.attack_files_and_version(attack_name), *code_versions(stage=self.PATCHED_VERSION))

    def patched_val(self, attack_name: str, target: int, seed: int) -> PatchedSet:
        """The validation set with ``target``'s trigger on every image (cached)."""
        attack = self.attack(attack_name)
        key = self.patched_key(attack_name, target, seed)
        folder = self.cache.dir("patched", key)

        def load() -> PatchedSet:
            if (folder / "patched.npz").is_file():  # cached before the memory-mapped store (issue #15)
                with np.load(folder / "patched.npz") as d:
                    return PatchedSet(d["images"], d["labels"], d["boxes"])
            with np.load(folder / "patched-meta.npz") as d:
                return PatchedSet(open_array(folder / "images.npy"), d["labels"], d["boxes"])

        def compute() -> PatchedSet:
            patched = attack.patch_val(self.downstream_splits().val, target, seed)
            save_array(folder / "images.npy", patched.images)
            save_arrays(folder / "patched-meta.npz", labels=patched.labels, boxes=patched.boxes)
            self.cache.mark_done("patched", key, {"attack": attack_name, "target": target})
            return load()

        return self.cache.run("patched", key, load, compute)

