"""The grid: attacks x targets x rates x seeds, every defense on each cell, results saved as they come."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchsuite import __version__
from benchsuite.core import distributed
from benchsuite.core.cache import keyed_fields, stable_hash
from benchsuite.core.checkpoint import save_json, sweep_temp_files
from benchsuite.core.console import note, set_log_file
from benchsuite.engine.executors import ExecutorSpec, execute
from benchsuite.engine.plugin_errors import naming_plugins
from benchsuite.engine.provenance import collect
from benchsuite.protocols.base import cell_slug
from benchsuite.protocols.cell import defense_protocol, run_cell, threat_protocol
from benchsuite.reporting.results import save_results
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry, get_registry
from benchsuite.settings.validate import check_config
from benchsuite.stages import Cell, Stages


def cells(config: RunConfig, expand: Callable[[str, tuple[int, ...]], tuple[int, ...]] | None = None) -> list[Cell]:
    """The grid's cells; ``expand(attack, targets)`` gives the targets a cell poisons (``Attack.cell_targets``)."""
    g = config.grid
    grid = itertools.product(g.attacks, g.targets, g.rates, g.seeds)
    # a widened cell may coincide with another one (multi-target from 0 and from 1 with explicit targets)
    return list(dict.fromkeys(Cell(a, expand(a, tuple(t)) if expand else tuple(t), r, s) for a, t, r, s in grid))


def run_id(config: RunConfig) -> str:
    """Same configuration -> same run directory, so a rerun resumes into it."""
    data = config.to_dict()
    data.pop("cpu_threads", None)  # a compute setting, as the device
    # options added later (to the grid, the probe) move the run only when they are set
    data["grid"] = keyed_fields(config.grid)
    data["probe"] = keyed_fields(config.probe)
    if data.get("downstream") is None:  # likewise the downstream dataset
        data.pop("downstream", None)
    return f"{config.preset}-{config.dataset.name}-{stable_hash(data, length=8)}"


# bump when a cell's rows gain columns computed from cached stages: older cell results are then rebuilt
# (from their cached stages, so cheaply) instead of served without the new columns
ROWS_VERSION = 3  # 3: threat and badencoder_asr columns


class GridRunner:
    """A grid run: which cells there are, which are finished, and their results saved as they come."""

    def __init__(self, config: RunConfig, registry: Registry, out: Path) -> None:
        self.config = config
        self.registry = registry
        self.out = Path(out)
        if config.cpu_threads:  # before any stage (and before provenance records the count)
            torch.set_num_threads(config.cpu_threads)
        self.run_dir = self.out / run_id(config)
        self.stages = Stages(config, registry, self.out / "cache")
        self._cell_stages: dict[Cell, list[list[str]]] = {}  # the (stage, key) pairs each cell ran through
        self._cell_curves: dict[Cell, list[dict[str, Any]]] = {}  # train.snapshots: the learning curve rows
        check_config(config, registry)  # every option of every section, before any stage runs
        # the threat encoder is built for every cell anyway, so its "w/o Defense" column always comes first
        names = ["none", *[d for d in config.grid.defenses if d != "none"]]
        self.defenses = [self.stages.defense(name) for name in names]
        self.protocols = [defense_protocol(self.stages, d) for d in self.defenses]  # fail fast on unknown kinds
        for cell in cells(config):  # fail fast on bad names, targets and threat kinds, before any training
            threat_protocol(self.stages, cell.attack)

    def run(self, executor: ExecutorSpec | None = None) -> pd.DataFrame:
        """Run every cell not finished yet (reusing whatever the stage cache holds); return the results frame.

        A finished cell's rows live in ``<run>/cells/``; a rerun of the same command loads them.
        """
        executor = executor or ExecutorSpec()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():  # under torchrun rank 0 alone writes the run's files
            sweep_temp_files(self.out)  # what a killed run left half-written
            save_json(self.run_dir / "config.json", {"version": __version__, "config": self.config.to_dict()})
            save_json(self.run_dir / "provenance.json", collect(self.stages.device))
        all_cells = self._cells()
        by_kind: dict[str, list[Cell]] = {}
        for cell in all_cells:
            by_kind.setdefault(self.stages.attack(cell.attack).threat, []).append(cell)
        for kind_cells in by_kind.values():
            threat_protocol(self.stages, kind_cells[0].attack).check(self.stages, kind_cells)
        set_log_file(self.run_dir / "run.log")
        note(f"run directory: {self.run_dir}")
        finished = {cell: rows for cell in all_cells if (rows := self.load_cell(cell)) is not None}
        pending = [cell for cell in all_cells if cell not in finished]
        if finished:
            note(f"{len(finished)} of {len(all_cells)} cells already finished")

        def ordered_rows() -> list[dict[str, Any]]:
            return [row for cell in all_cells if cell in finished for row in finished[cell]]

        for cell, rows in execute(run_cell_job, self.config, self.out, pending, executor, self.run_dir / "submitit"):
            finished[cell] = rows
            note(f"cell {len(finished)}/{len(all_cells)} done: {cell.label}")
            save_results(self.run_dir, ordered_rows())
            self._save_curve(all_cells, finished)
        self._save_curve(all_cells, finished)
        return save_results(self.run_dir, ordered_rows())

    def _save_curve(self, all_cells: list[Cell], finished: dict[Cell, Any]) -> None:
        """With ``train.snapshots``: ``<run>/curve.csv`` and ``figures/curve.png`` of the cells finished so far."""
        if self.config.train.snapshots and distributed.is_main():
            from benchsuite.reporting.curve import save_curve  # matplotlib: only when there is a curve

            save_curve(self.run_dir, [row for cell in all_cells if cell in finished for row in self.load_curve(cell)])

    def load_curve(self, cell: Cell) -> list[dict[str, Any]]:
        """The learning-curve rows saved with a finished cell (none without ``train.snapshots``)."""
        try:
            return json.loads(self.cell_file(cell).read_text()).get("curve", [])
        except (OSError, ValueError, AttributeError):
            return []

    def cell_file(self, cell: Cell) -> Path:
        return self.run_dir / "cells" / f"{cell_slug(cell)}.json"

    def cell_inputs(self, cell: Cell) -> dict[str, str]:
        """The keys a cell's stages derive from (its threat protocol's: for data poisoning the poisoned set and
        threat encoder), so a cell result goes stale when any of them changes."""
        return {**threat_protocol(self.stages, cell.attack).inputs(self.stages, cell), "rows": str(ROWS_VERSION)}

    def save_cell(self, cell: Cell, rows: list[dict[str, Any]]) -> None:
        """Write a cell's rows with the keys of its inputs and of the stages they came from."""
        if distributed.is_main():
            stages = self._cell_stages.get(cell, [])
            curve = {"curve": self._cell_curves[cell]} if cell in self._cell_curves else {}
            save_json(self.cell_file(cell), {"inputs": self.cell_inputs(cell), "stages": stages, "rows": rows,
                                             **curve})

    def load_cell(self, cell: Cell) -> list[dict[str, Any]] | None:
        """A finished cell's rows, or None when it must run (again): no result yet, or a stale one
        (its inputs changed, or a stage it came from is no longer cached)."""
        try:
            saved = json.loads(self.cell_file(cell).read_text())
        except (OSError, ValueError):  # missing, or unreadable: run the cell (its stages are cached)
            return None
        if not isinstance(saved, dict) or saved.get("inputs") != self.cell_inputs(cell):
            return None
        if not all(self.stages.cache.is_done(stage, key) for stage, key in saved.get("stages", [])):
            return None
        if any("patched_confusion" not in row and "not_applicable" not in row for row in saved["rows"]):
            return None  # a cell run before the column
        return saved["rows"]

    def _cells(self) -> list[Cell]:
        """The cells with the targets each attack poisons (a multi-target attack widens a one-target cell)."""
        n = self.stages.splits().train.num_classes
        return cells(self.config, lambda attack, targets: self.stages.attack(attack).cell_targets(targets, n))

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        with naming_plugins(self.registry, f"cell {cell.label}"):  # in the worker, where the traceback is
            result = run_cell(self.stages, cell, self.run_dir, self.defenses)
        if result.curve is not None:
            self._cell_curves[cell] = result.curve
        self._cell_stages[cell] = result.stages
        return result.rows


def run_cell_job(config: RunConfig, out: str, cell: Cell, gpus: Any = None) -> list[dict[str, Any]]:
    """One cell, start to finish, in whatever process an executor runs it; returns (and saves) its rows.

    ``gpus``: a queue of free GPU indices shared by worker processes; this job takes one while it runs."""
    gpu = gpus.get() if gpus is not None else None
    try:
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before this fresh process touches CUDA
        runner = GridRunner(config, get_registry(), Path(out))
        rows = runner.run_cell(cell)
        runner.save_cell(cell, rows)
        return rows
    finally:
        if gpu is not None:
            gpus.put(gpu)
