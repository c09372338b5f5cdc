"""Encoder-level repairers: a repaired copy of the encoder under threat, with no verdict (distillation)."""

from __future__ import annotations

from typing import Any

from benchsuite.api import Defense
from benchsuite.protocols.base import CellRun, DefenseProtocol, PlannedStage, Threat
from benchsuite.stages import Cell, Stages


class RepairerProtocol(DefenseProtocol):
    kind = name = "repairer"
    description = "repair the encoder under threat with the defender's clean data, evaluate the repaired copy"

    def plan(self, stages: Stages | None, cell: Cell, defense: Defense,
             threat_key: str | None) -> list[PlannedStage]:
        key = stages.repair_key(defense, threat_key, cell.seed) if stages is not None else None
        return [PlannedStage("mitigate", "repair", key, defense)]

    def run(self, run: CellRun, defense: Defense, threat: Threat) -> list[dict[str, Any]]:
        stages, cell = run.stages, run.cell
        encoder = stages.repair(defense, threat.encoder, None, cell.seed)
        key = stages.repair_key(defense, threat.encoder.key, cell.seed)
        timing = stages.cache.stage_cost("mitigate", key)
        extra = {**threat.columns, "mitigate_s": timing.wall_s if timing is not None else float("nan")}
        return run.evaluated_rows(defense.name, encoder, extra, run.costs([("mitigate", key)], []))
