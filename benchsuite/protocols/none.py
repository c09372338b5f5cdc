"""No defense: the encoder under threat evaluated as it is (the "w/o Defense" column)."""

from __future__ import annotations

from typing import Any

from benchsuite.api import Defense
from benchsuite.protocols.base import CellRun, DefenseProtocol, PlannedStage, Threat
from benchsuite.stages import Cell, Stages


class NoDefenseProtocol(DefenseProtocol):
    kind = name = "none"
    description = "evaluate the encoder under threat as it is"

    def plan(self, stages: Stages | None, cell: Cell, defense: Defense,
             threat_key: str | None) -> list[PlannedStage]:
        return []

    def run(self, run: CellRun, defense: Defense, threat: Threat) -> list[dict[str, Any]]:
        return run.evaluated_rows(defense.name, threat.encoder, threat.columns, run.costs([], threat.cost_stages))
