"""What a protocol is: the stages one threat kind or one defense kind runs in a cell, and its result rows.

A threat protocol (one per ``Attack.threat``) builds the encoder under threat; a defense protocol (one
per ``Defense.kind``) defends it and evaluates what it gives. Both list their stages in :meth:`plan`,
which the grid's ``--dry-run`` and ``bench doctor``'s projection read, so the dispatch on a kind lives
here alone. A plugin adds a kind by contributing its protocol (hooks ``benchsuite_threat_protocols``,
``benchsuite_defense_protocols``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchsuite.api import Defense, Poisoning
from benchsuite.core import distributed
from benchsuite.core.checkpoint import copy_file
from benchsuite.core.cost import row_costs
from benchsuite.settings.config import RunConfig
from benchsuite.stages import Cell, Encoder, Stages


def cell_slug(cell: Cell) -> str:
    """A file-name form of a cell: ``htba_t0_r0.5_s1``."""
    return f"{cell.attack}_t{'+'.join(map(str, cell.targets))}_r{cell.rate:g}_s{cell.seed}"


@dataclass(frozen=True)
class PlannedStage:
    """One stage a protocol runs in a cell.

    ``stage`` is the cache stage (``pretrain``, ``detect``, ``inspect``, ``mitigate``, ...), ``label`` what it
    is in the cell (``retrain``, ``random removal``); ``key`` its cache key, None where the plan is made
    without the data (the projection) or the key is known only after an earlier stage ran (a retrain after
    its detection); ``defense`` the defense (part) doing the work; ``images`` what a training stage trains
    on (``train``: the full training set, ``kept``: what a filter kept); ``encoders`` how many encoders of
    the cell it runs on (a detector judges the threat and the clean encoder: the clean one once per seed)."""

    stage: str
    label: str
    key: str | None = None
    defense: Defense | None = None
    images: str = "train"
    per_seed: bool = False  # runs once per seed, shared by the cells of that seed (the clean encoder)


@dataclass
class Threat:
    """What a threat protocol hands the defenses of a cell: the encoder under threat and the attack's
    ground truth (where its triggers are), which a defense never sees but its evaluation uses."""

    encoder: Encoder
    columns: dict[str, Any]  # n_train, n_poison and the attack's own columns
    triggers: dict[int, np.ndarray] = field(default_factory=dict)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))  # (N, 4) trigger boxes
    box_targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (N,) target per box
    poisoning: Poisoning | None = None  # the poisoned training set (data threats)
    poison_key: str | None = None
    cost_stages: list[tuple[str, str]] = field(default_factory=list)  # what producing the threat cost


@dataclass
class CellRun:
    """One cell as the protocols see it: the stages, the cell, and where its results and figures go."""

    stages: Stages
    cell: Cell
    run_dir: Path
    threat: str = "data"  # the kind of the cell's threat (``Attack.threat``)

    @property
    def config(self) -> Any:
        return self.stages.config

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures" / cell_slug(self.cell)

    def base_row(self, defense: str, encoder_key: str) -> dict[str, Any]:
        c, cell = self.config, self.cell
        downstream = c.downstream.label if c.downstream is not None else c.dataset.label
        return {"dataset": c.dataset.label, "downstream": downstream, "preset": c.preset, "attack": cell.attack,
                "threat": self.threat,
                "targets": "+".join(map(str, cell.targets)), "rate": cell.rate, "seed": cell.seed,
                "defense": defense, "ssl": c.ssl.method, "backbone": c.ssl.backbone, "epochs": c.train.epochs,
                "probe": c.probe.kind, "label_fraction": c.probe.label_fraction, "encoder_key": encoder_key}

    def costs(self, defense: list[tuple[str, str]], pretrain: list[tuple[str, str]],
              filtered_images: int | None = None) -> dict[str, Any]:
        """The ``cost_*`` columns from the recorded costs of the defense's own stages and of the pretraining of
        the row's encoder (README, "Results columns"); a cached stage keeps the cost it had when it ran."""
        cache = self.stages.cache
        return row_costs([cache.stage_cost(*s) for s in defense], [cache.stage_cost(*s) for s in pretrain],
                         filtered_images)

    def link_figures(self, workdir: Path, name: str) -> str:
        """Copy a defense's pictures (retrieved patches, attention maps) into ``<run>/figures/``."""
        copied = []
        for png in sorted(Path(workdir).glob("*.png")):
            if distributed.is_main():
                self.figures.mkdir(parents=True, exist_ok=True)
                copy_file(png, self.figures / f"{name}_{png.name}")
            copied.append(str((self.figures / f"{name}_{png.name}").relative_to(self.run_dir)))
        return ";".join(copied)

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run_dir))

    def evaluated_rows(self, defense: str, encoder: Encoder, *columns: dict[str, Any],
                       per_target: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One row per target: the probe metrics of ``encoder`` with ``columns`` (and per-target columns)."""
        per_target = per_target or {}
        merged: dict[str, Any] = {}
        for part in columns:
            merged.update(part)
        return [{**self.base_row(defense, encoder.key), **metrics, **merged, **per_target.get(metrics["target"], {})}
                for metrics in self.stages.evaluate(encoder, self.cell)]


class ThreatProtocol:
    """How the encoder under threat of one threat kind comes about (``kind`` = ``Attack.threat``)."""

    kind: ClassVar[str]
    name: ClassVar[str]  # the registry name: the kind
    description: ClassVar[str] = ""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def check(self, stages: Stages, cells: list[Cell]) -> None:
        """Refuse cells that cannot run, before any stage runs (e.g. a poison rate that poisons nothing)."""

    def inputs(self, stages: Stages, cell: Cell) -> dict[str, str]:
        """The keys a cell's result derives from, so it goes stale when any of them changes."""
        raise NotImplementedError

    def plan(self, stages: Stages | None, cell: Cell) -> list[PlannedStage]:
        """The stages that build the threat (keys filled in when ``stages`` is given)."""
        raise NotImplementedError

    def prepare(self, run: CellRun) -> Threat:
        """Run the stages and return the threat (attack pictures saved before any training)."""
        raise NotImplementedError


class DefenseProtocol:
    """How a defense of one kind runs on a threat and which rows it gives (``kind`` = ``Defense.kind``)."""

    kind: ClassVar[str]
    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def applies(self, threat_kind: str) -> str | None:
        """None where the kind defends against ``threat_kind``, else why not (shown as ``n/a`` in the tables)."""
        return None

    def plan(self, stages: Stages | None, cell: Cell, defense: Defense,
             threat_key: str | None) -> list[PlannedStage]:
        """The stages the defense runs in a cell (keys filled in when ``stages`` is given)."""
        raise NotImplementedError

    def run(self, run: CellRun, defense: Defense, threat: Threat) -> list[dict[str, Any]]:
        """Defend, evaluate, return one results row per target."""
        raise NotImplementedError


def not_applicable_rows(run: CellRun, defense: Defense, reason: str) -> list[dict[str, Any]]:
    """The rows of a defense that does not apply to the cell's threat: ``n/a`` with the reason, no metric."""
    return [{**run.base_row(defense.name, ""), "target": t, "not_applicable": reason} for t in run.cell.targets]
