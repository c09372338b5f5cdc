"""``bench run --dry-run``: the cells of a grid and which of their stages the cache already holds."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from benchsuite.api import ComposedDefense, Defense
from benchsuite.console import console
from benchsuite.eval.detection import random_removal
from benchsuite.grid import GridRunner, kept_data_key
from benchsuite.pipeline import Cell


def _mark(done: bool | None) -> str:
    return {True: "[green]cached[/]", False: "[yellow]to do[/]", None: "[dim]after detect[/]"}[done]


def defense_status(runner: GridRunner, cell: Cell, defense: Defense, poison_key: str, threat_key: str) -> str:
    """What a defense still needs in a cell: its detection (filters) and its encoder."""
    p, cache = runner.pipeline, runner.pipeline.cache
    if defense.kind == "none":
        return "-"
    if defense.kind == "training":
        return f"pretrain {_mark(cache.is_done('pretrain', p.pretrain_key(poison_key, cell.seed, defense)))}"
    if defense.kind == "model":
        return f"inspect {_mark(cache.is_done('inspect', p.inspect_key(defense, threat_key, cell.seed)))}"
    filter_defense = defense.filter if isinstance(defense, ComposedDefense) else defense
    training = defense.training if isinstance(defense, ComposedDefense) else None
    detect_key = p.detect_key(filter_defense, threat_key, poison_key, cell.seed)
    retrain: bool | None = None
    control: bool | None = None
    if cache.is_done("detect", detect_key):
        with np.load(cache.dir("detect", detect_key) / "detection.npz") as d:
            remove = d["remove"]
        retrain = cache.is_done("pretrain", p.pretrain_key(kept_data_key(poison_key, remove), cell.seed, training))
        if runner.config.grid.removal_control:
            random = random_removal(len(remove), int(remove.sum()), cell.seed)
            control = cache.is_done("pretrain", p.pretrain_key(kept_data_key(poison_key, random), cell.seed, training))
    status = f"detect {_mark(cache.is_done('detect', detect_key))}, retrain {_mark(retrain)}"
    return status + (f", random removal {_mark(control)}" if runner.config.grid.removal_control else "")


def print_plan(runner: GridRunner) -> None:
    """A table: one row per cell, its stages cached or still to do."""
    p = runner.pipeline
    table = Table(title=f"dry run: {runner.run_dir}", title_justify="left")
    for column in ["cell", "result", "poison", "encoder", *[d.name for d in runner.defenses[1:]]]:
        table.add_column(column)
    if runner.config.grid.reference:
        table.add_column("clean model")
    for cell in runner._cells():
        poison_key = p.poison_key(cell)
        threat_key = p.pretrain_key(poison_key, cell.seed)
        row = [cell.label, "[green]done[/]" if runner.load_cell(cell) is not None else "[yellow]to do[/]",
               _mark(p.cache.is_done("poison", poison_key)), _mark(p.cache.is_done("pretrain", threat_key))]
        row += [defense_status(runner, cell, d, poison_key, threat_key) for d in runner.defenses[1:]]
        if runner.config.grid.reference:
            clean_key = p.pretrain_key(p.clean_data_key, cell.seed)
            row.append(_mark(p.cache.is_done("pretrain", clean_key)))
        table.add_row(*row)
    console.print(table, width=max(console.width, 160))
