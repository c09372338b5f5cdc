"""The ``bench`` command: run a grid, print tables, list plugins."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from benchsuite import __version__
from benchsuite.config import PRESETS, apply_override, build_config, read_preset
from benchsuite.console import console
from benchsuite.errors import BenchError
from benchsuite.registry import SECTIONS, get_registry
from benchsuite.results import load_results
from benchsuite.tables import markdown_table, rich_table, table1_frame, table2_frame, table_width


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise BenchError(f"--{what} {text!r} must be comma-separated integers, e.g. 0,1,2") from None


def _targets(text: str) -> list[list[int]]:
    """``0,2`` = two cells; ``0+3+5`` = one multi-target cell."""
    try:
        return [[int(t) for t in cell.split("+")] for cell in _csv(text)]
    except ValueError:
        raise BenchError(f"--targets {text!r} must look like 0,1 (cells) or 0+3 (one multi-target cell)") from None


def _rates(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv(text)]
    except ValueError:
        raise BenchError(f"--rates {text!r} must be comma-separated fractions, e.g. 0.5,1.0") from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench", description="Backdoor attacks x defenses on SSL encoders.")
    ap.add_argument("--version", action="version", version=f"benchsuite {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a grid of attacks x defenses x targets x seeds")
    run.add_argument("--attack", help="attack name(s), comma-separated (default: the preset's)")
    run.add_argument("--defense", help="defense name(s), comma-separated; none (w/o Defense) is always included")
    run.add_argument("--targets", help="target classes: 0,1 = two cells, 0+3 = one multi-target cell")
    run.add_argument("--seeds", help="seeds, comma-separated")
    run.add_argument("--rates", help="poison rates as fractions of the target class, comma-separated")
    run.add_argument("--preset", default="smoke", help=f"{', '.join(PRESETS)} or a .toml file (default: smoke)")
    run.add_argument("--dataset", help="synthetic (embedded), npz, imagefolder, cifar10, stl10, or a plugin's")
    run.add_argument("--data-path", help="folder of the dataset (npz, imagefolder, torchvision root)")
    run.add_argument("--download", action="store_true", help="let torchvision download cifar10/stl10")
    run.add_argument("--ssl", help="SSL method (see `bench list`)")
    run.add_argument("--backbone", help="backbone name (registered, or any timm model)")
    run.add_argument("--epochs", type=int, help="pretraining epochs")
    run.add_argument("--checkpoint", help="backbone state dict (.safetensors or weights-only .pt) to start from; "
                     "with --epochs 0 the encoder is evaluated as it is")
    run.add_argument("--trigger", help="'random' or a trigger image path (patch attacks)")
    run.add_argument("--trigger-size", type=float, help="trigger side: pixels if > 1, else a fraction of the image")
    run.add_argument("--reference", action=argparse.BooleanOptionalAction, default=None,
                     help="also train on the clean data for the clean-model ASR")
    run.add_argument("--device", help="auto, cpu or cuda[:N]")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any preset value, e.g. train.batch_size=128 (repeatable)")
    run.add_argument("--out", default="runs", help="root folder for runs and the stage cache (default: runs)")

    table = sub.add_parser("table", help="print the tables of a finished or partial run again")
    table.add_argument("run_dir", type=Path)
    table.add_argument("--format", choices=["rich", "markdown", "csv"], default="rich")

    sub.add_parser("list", help="list every registered attack, defense, dataset, SSL method and backbone")
    return ap


def _config_from_args(args: argparse.Namespace):
    data = read_preset(args.preset)
    grid = data.setdefault("grid", {})
    if args.attack:
        grid["attacks"] = _csv(args.attack)
    if args.defense:
        grid["defenses"] = _csv(args.defense)
    if args.targets:
        grid["targets"] = _targets(args.targets)
    if args.seeds:
        grid["seeds"] = _ints(args.seeds, "seeds")
    if args.rates:
        grid["rates"] = _rates(args.rates)
    if args.reference is not None:
        grid["reference"] = args.reference
    if args.dataset:
        data["dataset"] = {"name": args.dataset, "options": {} if args.dataset != data.get("dataset", {}).get("name")
                           else data["dataset"].get("options", {})}
    if args.data_path:
        data.setdefault("dataset", {})["path"] = args.data_path
    if args.download:
        data.setdefault("dataset", {}).setdefault("options", {})["download"] = True
    if args.ssl:
        data.setdefault("ssl", {})["method"] = args.ssl
        data["ssl"]["method_options"] = {}
    if args.backbone:
        data.setdefault("ssl", {})["backbone"] = args.backbone
        data["ssl"]["backbone_options"] = {}
    if args.checkpoint:
        data.setdefault("ssl", {})["checkpoint"] = args.checkpoint
    if args.epochs is not None:
        data.setdefault("train", {})["epochs"] = args.epochs
    for attack in grid.get("attacks", ["htba"]):
        if args.trigger:
            data.setdefault("attack", {}).setdefault(attack, {})["trigger"] = args.trigger
        if args.trigger_size is not None:
            data.setdefault("attack", {}).setdefault(attack, {})["trigger_size"] = args.trigger_size
    if args.device:
        data["device"] = args.device
    for assignment in args.set:
        apply_override(data, assignment)
    return build_config(data)


def cmd_run(args: argparse.Namespace) -> int:
    from benchsuite.grid import GridRunner

    config = _config_from_args(args)
    runner = GridRunner(config, get_registry(), Path(args.out))
    results = runner.run()
    print_tables(results)
    console.log(f"results: {runner.run_dir / 'results.csv'}  (again: bench table {runner.run_dir})")
    return 0


def print_tables(results, fmt: str = "rich") -> None:
    tables = [("Table 1 (PoisonCAM layout): ACC / ASR (%) on clean and patched validation data",
               table1_frame(results)),
              ("Table 2 (PoisonCAM Table 2 / PatchSearch Table 1): detection of the poisons by the filter defenses",
               table2_frame(results))]
    from rich.console import Console

    for title, frame in tables:
        if frame is None:
            continue
        out = Console(width=max(console.width, table_width(frame)))
        if fmt == "markdown":
            print(f"\n**{title}**\n\n{markdown_table(frame)}")
        elif fmt == "csv":
            frame.to_csv(sys.stdout, index=False)
        else:
            out.print(rich_table(frame, title))


def cmd_table(args: argparse.Namespace) -> int:
    print_tables(load_results(args.run_dir), args.format)
    return 0


def cmd_list(_: argparse.Namespace) -> int:
    registry = get_registry()
    titles = {"attack": "Attacks", "defense": "Defenses", "dataset": "Datasets", "ssl": "SSL methods",
              "backbone": "Backbones"}
    from rich.console import Console

    out = Console()
    for section in SECTIONS:
        table = Table(title=titles[section], title_justify="left")
        for column in ("name", "plugin", "description"):
            table.add_column(column)
        for entry in sorted(registry.items[section].values(), key=lambda e: e.name):
            kind = getattr(entry.obj, "kind", None)
            desc = f"[{kind}] {entry.description}" if section == "defense" and kind else entry.description
            table.add_row(entry.name, entry.plugin, desc)
        out.print(table)
    if registry.failed:
        table = Table(title="Plugins that failed to load", title_justify="left", style="red")
        table.add_column("plugin")
        table.add_column("error")
        for name, error in sorted(registry.failed.items()):
            table.add_row(name, error)
        out.print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handlers = {"run": cmd_run, "table": cmd_table, "list": cmd_list}
    try:
        return handlers[args.command](args)
    except BenchError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: finished stages are cached; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
