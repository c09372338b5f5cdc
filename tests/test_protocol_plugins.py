"""A third-party plugin adds a threat kind and a defense kind with their protocols, and they run through the
grid, the tables and ``--dry-run`` with no edit to the core (issue #22)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchsuite.api import Attack, Defense, Detection, PatchedSet, hookimpl
from benchsuite.core.console import console
from benchsuite.engine import grid
from benchsuite.engine.dryrun import print_plan
from benchsuite.engine.grid import GridRunner
from benchsuite.protocols.base import CellRun, DefenseProtocol, PlannedStage, Threat, ThreatProtocol
from benchsuite.reporting.tables import not_applicable_notes, table1_frame
from benchsuite.settings.config import apply_override, build_config, read_preset
from benchsuite.settings.registry import build_registry, discover_plugins
from benchsuite.stages import Cell, Stages
from tests.conftest import TINY_OVERRIDES


@dataclass
class CornerConfig:
    side: int = 4


class CornerImplant(Attack):
    """A threat of a new kind: the attacker hands over an encoder (here: the clean one, unchanged)."""

    name = "corner-implant"
    threat = "implant"
    Config = CornerConfig

    def patch_val(self, val, target: int, seed: int) -> PatchedSet:
        images = val.images.copy()
        images[:, : self.config.side, : self.config.side] = 255
        boxes = np.tile([0, 0, self.config.side, self.config.side], (len(val), 1))
        return PatchedSet(images, val.labels, boxes)


class ImplantProtocol(ThreatProtocol):
    kind = name = "implant"

    def inputs(self, stages: Stages, cell: Cell) -> dict[str, str]:
        return {"clean": stages.clean_encoder_key(cell.seed),
                "patched": stages.patched_key(cell.attack, cell.targets[0], cell.seed)}

    def plan(self, stages: Stages | None, cell: Cell) -> list[PlannedStage]:
        key = stages.clean_encoder_key(cell.seed) if stages is not None else None
        return [PlannedStage("pretrain", "clean encoder", key, per_seed=True)]

    def prepare(self, run: CellRun) -> Threat:
        encoder = run.stages.clean_encoder(run.cell.seed)
        return Threat(encoder, {"n_train": len(run.stages.splits().train), "n_poison": 0},
                      cost_stages=[("pretrain", encoder.key)])


@dataclass
class NoOptions:
    pass


class FeatureNorm(Defense):
    """A defense of a new kind: it audits an encoder by the mean norm of its validation features."""

    name = "feature-norm"
    kind = "audit"
    Config = NoOptions


class AuditProtocol(DefenseProtocol):
    kind = name = "audit"

    def plan(self, stages: Stages | None, cell: Cell, defense: Defense, threat_key: str | None) -> list[PlannedStage]:
        key = stages.features_key(threat_key, "val", stages.dataset_key) if stages is not None else None
        return [PlannedStage("features", "audit", key, defense)]

    def run(self, run: CellRun, defense: Defense, threat: Threat) -> list[dict[str, Any]]:
        val = run.stages.splits().val
        feats = run.stages.features(threat.encoder, val.images, "val", run.stages.dataset_key)
        norm = float(np.linalg.norm(feats, axis=1).mean())
        return run.evaluated_rows(defense.name, threat.encoder, threat.columns, {"feature_norm": norm})


@dataclass
class KeepConfig:
    pass


class KeepAll(Defense):
    """A filter that removes nothing: runs on data threats, declared n/a on the implant."""

    name = "keep-all"
    kind = "filter"
    Config = KeepConfig

    def detect(self, ctx) -> Detection:
        return Detection(np.zeros(len(ctx.images)), np.zeros(len(ctx.images), dtype=bool))


class NewKinds:
    @hookimpl
    def benchsuite_attacks(self):
        return [CornerImplant]

    @hookimpl
    def benchsuite_defenses(self):
        return [FeatureNorm, KeepAll]

    @hookimpl
    def benchsuite_threat_protocols(self):
        return [ImplantProtocol]

    @hookimpl
    def benchsuite_defense_protocols(self):
        return [AuditProtocol]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    registry = build_registry([*discover_plugins()[0], ("newkinds", NewKinds())])
    monkeypatch.setattr(grid, "get_registry", lambda: registry)  # the cell jobs build their runner from it
    data = read_preset("smoke")
    for item in [*TINY_OVERRIDES, 'grid.attacks=["htba", "corner-implant"]', "grid.targets=[[0]]",
                 "grid.rates=[0.5]", 'grid.defenses=["keep-all", "feature-norm"]']:
        apply_override(data, item)
    return GridRunner(build_config(data), registry, tmp_path)


def test_new_threat_and_defense_kinds_run_through_the_grid(runner):
    results = runner.run()
    rows = {(r.attack, r.defense): r for r in results.itertuples()}
    implant_filter = rows[("corner-implant", "keep-all")]
    assert "poisons no training data" in implant_filter.not_applicable
    assert np.isnan(implant_filter.clean_acc)  # n/a, never a zero
    for attack in ("htba", "corner-implant"):
        audited = rows[(attack, "feature-norm")]
        assert audited.feature_norm > 0 and 0 <= audited.clean_acc <= 100
        assert audited.encoder_key == rows[(attack, "none")].encoder_key  # the audit evaluates the encoder as is
    assert pd.isna(rows[("htba", "keep-all")].not_applicable) and rows[("htba", "keep-all")].n_train == 240
    # the implant's threat encoder is the clean one: same key as the reference
    assert rows[("corner-implant", "none")].encoder_key == rows[("corner-implant", "clean-model")].encoder_key

    frame = table1_frame(results)
    implant = frame[frame[("", "Attack")] == "corner-implant"]
    assert (implant[("keep-all", "Clean ACC")] == "n/a").all()
    assert (frame[frame[("", "Attack")] == "htba"][("keep-all", "Clean ACC")] != "n/a").all()
    assert not_applicable_notes(results) == [f"n/a: keep-all on corner-implant: {implant_filter.not_applicable}"]

    again = GridRunner(runner.config, runner.registry, runner.out).run()  # every cell loaded, n/a rows too
    pd.testing.assert_frame_equal(again, results)


def test_new_kinds_in_the_dry_run(runner, monkeypatch):
    monkeypatch.setattr(console, "width", 300)  # one line per cell
    with console.capture() as captured:
        print_plan(runner)
    text = captured.get()
    assert "corner-implant" in text and "n/a: a filter removes" in text
    assert "audit to do" in text and "clean encoder to do" in text and "retrain after detect" in text
    assert not list(runner.out.glob("cache/pretrain/*/DONE")), "a dry run trained something"
