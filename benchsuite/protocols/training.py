"""Training-time defenses: the victim pretrains on the poisoned set with a changed SSL method (i-CutMix)."""

from __future__ import annotations

from typing import Any

from benchsuite.api import Defense
from benchsuite.protocols.base import CellRun, DefenseProtocol, PlannedStage, Threat
from benchsuite.stages import Cell, Stages


class TrainingProtocol(DefenseProtocol):
    kind = name = "training"
    description = "pretrain on the poisoned training set with the defense wrapping the SSL method"

    def applies(self, threat_kind: str) -> str | None:
        if threat_kind != "data":
            return "a training-time defense needs the victim's pretraining; this threat ships a trained encoder"
        return None

    def plan(self, stages: Stages | None, cell: Cell, defense: Defense,
             threat_key: str | None) -> list[PlannedStage]:
        key = stages.pretrain_key(stages.poison_key(cell), cell.seed, defense) if stages is not None else None
        return [PlannedStage("pretrain", "pretrain", key, defense)]

    def run(self, run: CellRun, defense: Defense, threat: Threat) -> list[dict[str, Any]]:
        cell = run.cell
        encoder = run.stages.encoder(threat.poisoning.train.images, threat.poison_key, cell.seed,
                                     label=f"pretrain {defense.name} {cell.label}", training=defense)
        costs = run.costs([("pretrain", encoder.key)], [("pretrain", encoder.key)])
        return run.evaluated_rows(defense.name, encoder, threat.columns, costs)
