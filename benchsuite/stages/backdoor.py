"""The backdoor stage: a model attack's backdoored copy of the clean encoder of a seed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchsuite.api import AttackContext, Backdoor, ImageDataset, ModelAttack
from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.core.checkpoint import load_into, save_json, save_tensors
from benchsuite.core.errors import BenchError
from benchsuite.stages.base import Cell, Encoder, StageBase, save_arrays


@dataclass
class Backdoored:
    """A backdoored encoder as the stage keeps it: the encoder, the attack's triggers and references."""

    encoder: Encoder
    triggers: dict[int, np.ndarray] = field(default_factory=dict)
    references: dict[int, np.ndarray] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    n_shadow: int = 0


class BackdoorStage(StageBase):
    """Key: the clean encoder's key, the attack (name, resolved config, files, code version), the cell."""

    BACKDOOR_VERSION = 0

    def model_attack(self, name: str) -> ModelAttack:
        attack = self.attack(name)
        if not isinstance(attack, ModelAttack):
            raise BenchError(f"attack {name} is a {attack.threat} attack, not a model attack: it backdoors no encoder")
        return attack

    def backdoor_key(self, cell: Cell) -> str:
        attack = self.attack(cell.attack)
        # the reference images come from the downstream training split (the pre-training one unless set)
        downstream = () if self.config.downstream is None else (self.downstream_key,)
        return stable_hash("backdoor", self.clean_encoder_key(cell.seed), cell.attack, attack.config, cell.targets,
                           cell.seed, *self.attack_files_and_version(cell.attack), *downstream,
                           *code_versions(stage=self.BACKDOOR_VERSION))

    def backdoored(self, cell: Cell) -> Backdoored:
        """The cell's backdoored encoder (cached), made from the seed's clean encoder and the shadow images."""
        splits = self.splits()
        for t in cell.targets:
            self.downstream_splits().check_target(t)
        attack = self.model_attack(cell.attack)
        key = self.backdoor_key(cell)
        folder = self.cache.dir("backdoor", key)
        weights = folder / "encoder.safetensors"

        def load() -> Backdoored:
            backbone = self.build_method().backbone
            load_into(backbone, weights)
            meta = json.loads((folder / "backdoor.json").read_text())
            with np.load(folder / "backdoor-images.npz") as d:
                triggers = {int(k.split("_")[1]): d[k] for k in d.files if k.startswith("trigger_")}
                references = {int(k.split("_")[1]): d[k] for k in d.files if k.startswith("reference_")}
            return Backdoored(Encoder(key, backbone), triggers, references, meta["history"], meta["metrics"],
                              meta["warnings"], meta["n_shadow"])

        def compute() -> Backdoored:
            clean = self.clean_encoder(cell.seed)
            shadow_idx = np.asarray(attack.shadow_indices(len(splits.train), cell.seed), dtype=np.int64)
            shadow = ImageDataset(splits.train.images[shadow_idx], splits.train.labels[shadow_idx], splits.classes)
            mean, std = self.input_norm  # the clean encoder's, which the features are extracted with too
            context = AttackContext(self.device, folder, mean, std, self.downstream_splits().train)
            result: Backdoor = attack.backdoor(clean.backbone, shadow, list(cell.targets), cell.seed, context)
            save_tensors(weights, result.encoder.state_dict())
            save_arrays(folder / "backdoor-images.npz", **{f"trigger_{t}": v for t, v in result.triggers.items()},
                        **{f"reference_{t}": v for t, v in result.references.items()})
            save_json(folder / "backdoor.json", {"history": result.history, "metrics": result.metrics,
                                                 "warnings": result.warnings, "n_shadow": len(shadow_idx)})
            self.cache.mark_done("backdoor", key, {"cell": cell.label, "clean": clean.key,
                                                   "shadow": len(shadow_idx)})
            return load()

        return self.cache.run("backdoor", key, load, compute)
