"""One grid cell from start to finish: the threat protocol builds the encoder under threat, each defense's
protocol defends and evaluates it, then the clean reference and the learning curve. The one home of a
cell's orchestration; the grid only iterates cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchsuite.api import Defense
from benchsuite.core.errors import BenchError
from benchsuite.protocols.base import (
    CellRun,
    DefenseProtocol,
    PlannedStage,
    ThreatProtocol,
    cell_slug,
    not_applicable_rows,
)
from benchsuite.reporting.results import REFERENCE_DEFENSE
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry
from benchsuite.stages import Cell, Encoder, Stages


def threat_protocol_of(registry: Registry, config: RunConfig, kind: str, attack: str) -> ThreatProtocol:
    """The protocol of threat kind ``kind`` (``Attack.threat`` of ``attack``)."""
    protocols = registry.items["threat_protocol"]
    if kind not in protocols:
        raise BenchError(f"attack {attack} is of threat kind {kind!r}, which no installed plugin runs: known are "
                         f"{', '.join(sorted(protocols))}; install the plugin that adds it")
    return protocols[kind].obj(config)


def defense_protocol_of(registry: Registry, config: RunConfig, defense: Defense) -> DefenseProtocol:
    """The protocol of a defense's kind (``Defense.kind``)."""
    protocols = registry.items["defense_protocol"]
    if defense.kind not in protocols:
        raise BenchError(f"defense {defense.name} is of kind {defense.kind!r}, which no installed plugin runs: "
                         f"known are {', '.join(sorted(protocols))}; install the plugin that adds it")
    return protocols[defense.kind].obj(config)


def threat_protocol(stages: Stages, attack: str) -> ThreatProtocol:
    return threat_protocol_of(stages.registry, stages.config, stages.attack(attack).threat, attack)


def defense_protocol(stages: Stages, defense: Defense) -> DefenseProtocol:
    return defense_protocol_of(stages.registry, stages.config, defense)


@dataclass
class CellPlan:
    """A cell's stages as its protocols list them: the threat's, then each defense's (None: n/a, with why)."""

    cell: Cell
    threat: list[PlannedStage]
    defenses: dict[str, list[PlannedStage] | str] = field(default_factory=dict)
    reference: list[PlannedStage] = field(default_factory=list)


def plan_cell(stages: Stages | None, cell: Cell, threat: ThreatProtocol, defenses: list[tuple[Defense, Any]],
              reference: bool) -> CellPlan:
    """The stages of ``cell``; keys filled in where ``stages`` is given (``--dry-run``), None otherwise (the
    projection, which never loads the data). ``defenses``: (defense, its protocol) pairs."""
    threat_stages = threat.plan(stages, cell)
    threat_key = threat_stages[-1].key
    plan = CellPlan(cell, threat_stages)
    for defense, protocol in defenses:
        reason = protocol.applies(threat.kind)
        plan.defenses[defense.name] = reason if reason else protocol.plan(stages, cell, defense, threat_key)
    if reference:
        key = stages.clean_encoder_key(cell.seed) if stages is not None else None
        plan.reference = [PlannedStage("pretrain", "clean model", key, per_seed=True)]
    return plan


@dataclass
class CellResult:
    rows: list[dict[str, Any]]
    curve: list[dict[str, Any]] | None  # learning-curve rows with ``train.snapshots``
    stages: list[list[str]]  # the (stage, key) pairs the cell's rows came from


def run_cell(stages: Stages, cell: Cell, run_dir: Path, defenses: list[Defense]) -> CellResult:
    """Build the threat, run every defense on it, add the clean reference; rows in the grid's order."""
    used = len(stages.cache.used)
    protocol = threat_protocol(stages, cell.attack)
    run = CellRun(stages, cell, run_dir, protocol.kind)
    threat = protocol.prepare(run)
    rows: list[dict[str, Any]] = []
    for defense in defenses:
        defending = defense_protocol(stages, defense)
        reason = defending.applies(protocol.kind)
        rows += not_applicable_rows(run, defense, reason) if reason else defending.run(run, defense, threat)
    models = [("poisoned", threat.encoder)]
    if stages.config.grid.reference:
        clean = stages.clean_encoder(cell.seed)
        models.append(("clean", clean))
        for metrics in stages.evaluate(clean, cell):
            rows.append({**run.base_row(REFERENCE_DEFENSE, clean.key), **metrics,
                         **run.costs([], [("pretrain", clean.key)]),
                         "n_train": len(stages.splits().train), "n_poison": 0})
    curve = None
    if stages.config.train.snapshots:
        curve = [row for model, encoder in models for row in learning_curve(run, model, encoder)]
    used_stages = [["dataset", stages.dataset_stage_key], *map(list, dict.fromkeys(stages.cache.used[used:]))]
    return CellResult(rows, curve, used_stages)


def learning_curve(run: CellRun, model: str, encoder: Encoder) -> list[dict[str, Any]]:
    """The probe metrics of ``encoder`` at each snapshot epoch (each probe cached like any other)."""
    rows = []
    for epoch, snapshot in run.stages.snapshots(encoder):
        base = {**run.base_row(model, snapshot.key), "cell": cell_slug(run.cell), "model": model, "epoch": epoch}
        rows += [{**base, **metrics} for metrics in run.stages.evaluate(snapshot, run.cell)]
    return rows
