"""``bench run --dry-run``: the cells of a grid and which of their stages the cache already holds.

What each cell runs comes from its protocols' plans (:func:`benchsuite.protocols.cell.plan_cell`), the same
lists the grid runs and the projection prices."""

from __future__ import annotations

from rich.table import Table

from benchsuite.core.console import console
from benchsuite.engine.grid import GridRunner
from benchsuite.protocols.base import PlannedStage
from benchsuite.protocols.cell import plan_cell, threat_protocol


def _mark(done: bool | None) -> str:
    return {True: "[green]cached[/]", False: "[yellow]to do[/]", None: "[dim]after detect[/]"}[done]


def stage_status(runner: GridRunner, planned: list[PlannedStage]) -> str:
    """``label cached|to do|after detect`` for each planned stage, comma-separated; ``-`` when none."""
    cache = runner.stages.cache
    parts = [f"{s.label} {_mark(None if s.key is None else cache.is_done(s.stage, s.key))}" for s in planned]
    return ", ".join(parts) or "-"


def print_plan(runner: GridRunner) -> None:
    """A table: one row per cell, its stages cached or still to do."""
    stages = runner.stages
    table = Table(title=f"dry run: {runner.run_dir}", title_justify="left")
    for column in ["cell", "result", "threat", *[d.name for d in runner.defenses[1:]]]:
        table.add_column(column)
    if runner.config.grid.reference:
        table.add_column("clean model")
    pairs = list(zip(runner.defenses[1:], runner.protocols[1:]))
    for cell in runner._cells():
        plan = plan_cell(stages, cell, threat_protocol(stages, cell.attack), pairs, runner.config.grid.reference)
        row = [cell.label, "[green]done[/]" if runner.load_cell(cell) is not None else "[yellow]to do[/]",
               stage_status(runner, plan.threat)]
        for defense in runner.defenses[1:]:
            planned = plan.defenses[defense.name]
            row.append(f"[dim]n/a: {planned}[/]" if isinstance(planned, str) else stage_status(runner, planned))
        if runner.config.grid.reference:
            row.append(_mark(stages.cache.is_done("pretrain", plan.reference[0].key)))
        table.add_row(*row)
    console.print(table, width=max(console.width, 160))
