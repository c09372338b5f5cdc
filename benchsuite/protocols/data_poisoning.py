"""Data poisoning: the attacker poisons a share of the training set, the victim pretrains on it."""

from __future__ import annotations

from benchsuite.api import Splits
from benchsuite.core import distributed
from benchsuite.protocols.base import CellRun, PlannedStage, Threat, ThreatProtocol
from benchsuite.settings.validate import check_poison_counts
from benchsuite.stages import Cell, Stages


class DataPoisoning(ThreatProtocol):
    kind = name = "data"
    description = "poison a share of the training set; the victim pretrains its encoder on it from scratch"

    def check(self, stages: Stages, cells: list[Cell]) -> None:
        for cell in cells:
            for t in cell.targets:
                stages.splits().check_target(t)
                stages.downstream_splits().check_target(t)
        check_poison_counts(stages.splits(), [(stages.data_attack(c.attack), c.targets, c.rate) for c in cells])

    def inputs(self, stages: Stages, cell: Cell) -> dict[str, str]:
        poison_key = stages.poison_key(cell)
        return {"poison": poison_key, "threat": stages.pretrain_key(poison_key, cell.seed)}

    def plan(self, stages: Stages | None, cell: Cell) -> list[PlannedStage]:
        keys = self.inputs(stages, cell) if stages is not None else {"poison": None, "threat": None}
        return [PlannedStage("poison", "poison", keys["poison"]),
                PlannedStage("pretrain", "encoder", keys["threat"])]

    def prepare(self, run: CellRun) -> Threat:
        stages, cell = run.stages, run.cell
        poisoning, poison_key = stages.poisoning(cell)
        save_pictures(run, poisoning)
        threat = stages.encoder(poisoning.train.images, poison_key, cell.seed, label=f"pretrain {cell.label}")
        return Threat(threat, {"n_train": len(poisoning.train), "n_poison": int(poisoning.poison_mask.sum())},
                      poisoning.triggers, poisoning.boxes, poisoning.poison_target, poisoning, poison_key,
                      [("pretrain", threat.key)])


def save_pictures(run: CellRun, poisoning) -> None:
    """Save the cell's triggers, poisoned and patched images (issue #14) before any training."""
    from benchsuite.reporting.attack_pictures import save_attack_pictures  # matplotlib: only when a cell runs

    stages, cell = run.stages, run.cell
    patched = {t: stages.patched_val(cell.attack, t, cell.seed) for t in cell.targets}  # every rank: cached stage
    if distributed.is_main():
        shown = Splits(stages.splits().train, stages.downstream_splits().val)  # what was poisoned, what patched
        save_attack_pictures(run.figures, stages.attack(cell.attack), poisoning, shown, patched, title=cell.label)
