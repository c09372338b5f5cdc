"""Model poisoning: the attacker fine-tunes a clean pre-trained encoder into a backdoored one and publishes it.

The clean encoder is the seed's clean encoder of the recipe (the pretrain stage on the clean training
set, or the user's ``--checkpoint`` with ``--epochs 0``); the attacker's shadow images are drawn from the
training split. Nothing of the victim's training data is poisoned, so filter and training-time defenses
do not apply; the clean reference row is that clean encoder before the attack.
"""

from __future__ import annotations

import numpy as np

from benchsuite.api import ImageDataset
from benchsuite.core import distributed
from benchsuite.core.console import note
from benchsuite.protocols.base import CellRun, PlannedStage, Threat, ThreatProtocol
from benchsuite.stages import Backdoored, Cell, Stages


class ModelPoisoning(ThreatProtocol):
    kind = name = "model"
    description = "fine-tune the clean pre-trained encoder into a backdoored one (shadow images, a trigger loss)"

    def check(self, stages: Stages, cells: list[Cell]) -> None:
        """Targets of the downstream task, and a trigger that can be made (its file, its size) before the
        clean encoder trains: patching one validation image builds it."""
        downstream = stages.downstream_splits()
        val = downstream.val
        one = ImageDataset(val.images[:1], val.labels[:1], val.classes)
        for cell in cells:
            for t in cell.targets:  # the target is a class of the downstream task
                downstream.check_target(t)
                stages.attack(cell.attack).patch_val(one, t, cell.seed)

    def inputs(self, stages: Stages, cell: Cell) -> dict[str, str]:
        return {"clean": stages.clean_encoder_key(cell.seed), "backdoor": stages.backdoor_key(cell)}

    def plan(self, stages: Stages | None, cell: Cell) -> list[PlannedStage]:
        keys = self.inputs(stages, cell) if stages is not None else {"clean": None, "backdoor": None}
        return [PlannedStage("pretrain", "clean encoder", keys["clean"], per_seed=True),
                PlannedStage("backdoor", "backdoor", keys["backdoor"])]

    def prepare(self, run: CellRun) -> Threat:
        stages, cell = run.stages, run.cell
        backdoored = stages.backdoored(cell)
        for warning in backdoored.warnings:
            note(f"warning: {cell.label}: {warning}")
        patched = {t: stages.patched_val(cell.attack, t, cell.seed) for t in cell.targets}
        if distributed.is_main():
            save_pictures(run, backdoored, patched)
        target = cell.targets[0]
        columns = {"n_train": backdoored.n_shadow, "n_poison": 0,
                   **{f"attack_{k}": v for k, v in backdoored.metrics.items()},
                   "attack_warnings": "; ".join(backdoored.warnings)}
        boxes = patched[target].boxes
        return Threat(backdoored.encoder, columns, backdoored.triggers, boxes,
                      np.full(len(boxes), target, dtype=np.int64), cost_stages=[("backdoor", backdoored.encoder.key)])


def save_pictures(run: CellRun, backdoored: Backdoored, patched: dict) -> None:
    """The trigger, the reference image(s) and triggered validation images of the cell, before evaluation."""
    from benchsuite.reporting.attack_pictures import save_model_attack_pictures  # matplotlib: only here

    save_model_attack_pictures(run.figures, run.cell.attack, backdoored.triggers, backdoored.references,
                               run.stages.downstream_splits(), patched, title=run.cell.label)
