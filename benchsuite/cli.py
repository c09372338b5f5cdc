"""The ``bench`` command: run a grid, print tables, list plugins."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from benchsuite import __version__
from benchsuite.core import distributed
from benchsuite.core.console import console
from benchsuite.core.errors import BenchError
from benchsuite.core.folders import check_output_folder, describe_os_error
from benchsuite.engine.plugin_errors import SHOW_TRACEBACK, naming_plugins
from benchsuite.reporting.results import load_results
from benchsuite.reporting.tables import (
    DEFAULT_LAYOUTS,
    LAYOUTS,
    guard_notes,
    latex_table,
    markdown_table,
    not_applicable_notes,
    rich_table,
    table_width,
)
from benchsuite.settings.config import PRESETS, apply_override, build_config, read_preset, with_method_recipe
from benchsuite.settings.registry import SECTIONS, get_registry
from benchsuite.tools.cost_gate import DEFAULT_MAX_HOURS, check_cost
from benchsuite.tools.malloc import keep_freed_memory


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _nonempty(text: str, what: str, noun: str) -> list[str]:
    """The comma-separated items of ``--what``, refused when there are none (``--seeds ""``)."""
    items = _csv(text)
    if not items:
        raise BenchError(f"--{what} {text!r} names no {noun}: give at least one, or leave the option out")
    return items


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in _nonempty(text, what, what.rstrip("s"))]
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
        return [float(t) for t in _nonempty(text, "rates", "rate")]
    except ValueError:
        raise BenchError(f"--rates {text!r} must be comma-separated fractions, e.g. 0.5,1.0") from None


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a mistyped argument worded as the one ``error:`` line of every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        console.print(f"[bold red]error:[/] {escape(message)}: see {self.prog} --help", highlight=False,
                      soft_wrap=True)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    ap = _OneLineParser(prog="bench", description="Backdoor attacks x defenses on SSL encoders.")
    ap.add_argument("--version", action="version", version=f"benchsuite {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

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
    run.add_argument("--downstream", help="NAME[:PATH]: the dataset the probe trains and is scored on, when not the "
                     "pre-training one (BadEncoder's downstream task), e.g. npz:../shared/data/gtsrb")
    run.add_argument("--ssl", help="SSL method (see `bench list`)")
    run.add_argument("--backbone", help="backbone name (registered, or any timm model)")
    run.add_argument("--epochs", type=int, help="pretraining epochs")
    run.add_argument("--checkpoint", help="backbone state dict (.safetensors or weights-only .pt) to start from; "
                     "with --epochs 0 the encoder is evaluated as it is")
    run.add_argument("--trigger", help="'random' or a trigger image path (patch attacks)")
    run.add_argument("--trigger-size", type=float, help="trigger side: pixels if > 1, else a fraction of the image")
    run.add_argument("--trigger-dir", help="a folder of trigger PNGs for multi-target attacks: class k gets the "
                     "k-th by file name (HTBA's trigger_10.png ... trigger_19.png)")
    run.add_argument("--reference", action=argparse.BooleanOptionalAction, default=None,
                     help="also train on the clean data for the clean-model ASR")
    run.add_argument("--removal-control", action=argparse.BooleanOptionalAction, default=None,
                     help="beside each filter defense, retrain after removing as many images at random "
                     "(random_removal_* columns)")
    run.add_argument("--device", help="auto, cpu or cuda[:N]")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any preset value, e.g. train.batch_size=128 (repeatable)")
    run.add_argument("--out", default="runs", help="root folder for runs and the stage cache (default: runs)")
    run.add_argument("--dry-run", action="store_true", help="list the cells and which stages are cached; run nothing")
    run.add_argument("--yes", action="store_true", help="start even when the grid is projected beyond --max-hours")
    run.add_argument("--max-hours", type=float, default=DEFAULT_MAX_HOURS,
                     help=f"a new grid projected longer than this on this machine needs --yes (default "
                          f"{DEFAULT_MAX_HOURS:g})")
    run.add_argument("--executor", choices=["local", "submitit"], default="local",
                     help="local (this machine) or submitit (a SLURM job per cell; its local mode without SLURM)")
    run.add_argument("--workers", type=int, default=1,
                     help="local executor: cells at once, in separate processes (one GPU each when present)")
    run.add_argument("--cluster", choices=["slurm", "local", "debug"],
                     help="submitit cluster (default: SLURM when sbatch is found, else local processes)")
    run.add_argument("--slurm-partition", help="submitit on SLURM: the partition")
    run.add_argument("--slurm-time", type=int, default=24 * 60, help="submitit: minutes per cell job")
    run.add_argument("--slurm-gpus", type=int, default=1, help="submitit on SLURM: GPUs per cell job")
    run.add_argument("--slurm-cpus", type=int, default=8, help="submitit: CPUs per cell job")

    table = sub.add_parser("table", help="print the tables of a finished or partial run again")
    table.add_argument("run_dir", type=Path)
    table.add_argument("--layout", choices=[*LAYOUTS, "default"], default="default",
                       help="a paper's table (default: Table 1, the detection table, SSL-Cleanse DACC)")
    table.add_argument("--format", choices=["rich", "markdown", "latex", "csv"], default="rich")

    publish = sub.add_parser("publish", help="append a run's results to the leaderboard CSVs")
    publish.add_argument("run_dir", type=Path)
    publish.add_argument("--leaderboards", type=Path, default=Path("leaderboards"),
                         help="leaderboard folder (default: ./leaderboards)")

    report = sub.add_parser("report", help="write a self-contained HTML report of a run (tables and figures)")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--output", type=Path, help="HTML file (default: RUN_DIR/report.html)")

    board = sub.add_parser("leaderboard", help="render the leaderboard CSVs as a static HTML page (and one CSV per "
                           "metric set)")
    board.add_argument("--leaderboards", type=Path, default=Path("leaderboards"),
                       help="leaderboard folder (default: ./leaderboards)")
    board.add_argument("--output", type=Path, default=Path("docs/leaderboard"),
                       help="folder of the page, written as index.html (default: docs/leaderboard)")

    sub.add_parser("list", help="list every registered attack, defense, dataset, SSL method and backbone")

    scan = sub.add_parser("scan", help="is this encoder backdoored? encoder-level detectors (and repairers) on a "
                          "checkpoint, without a grid")
    scan.add_argument("--checkpoint", required=True, help="backbone state dict (.safetensors or weights-only .pt)")
    scan.add_argument("--defense", required=True, help="detectors and repairers, comma-separated, e.g. "
                      "decree,sslcleanse or decree,distill")
    scan.add_argument("--preset", default="smoke", help="the recipe the checkpoint was trained with (backbone, "
                      f"normalisation) and the defenses' options: {', '.join(PRESETS)} or a .toml file")
    for option in ("dataset", "data-path", "ssl", "backbone", "device"):
        scan.add_argument(f"--{option}", help=f"as for bench run --{option}: the defender's clean images "
                          "and the architecture")
    scan.add_argument("--seed", type=int, default=0, help="the defenses' seed (default 0)")
    scan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for bench run --set")
    scan.add_argument("--out", default="runs", help="root folder for the scan folder and the stage cache")
    scan.set_defaults(attack=None, targets=None, seeds=None, rates=None, reference=None, removal_control=None,
                      download=False, downstream=None, epochs=0, trigger=None, trigger_size=None, trigger_dir=None)

    doctor = sub.add_parser("doctor", help="what this machine can run, and how long a preset's grid would take here")
    doctor.add_argument("--preset", default="smoke", help=f"{', '.join(PRESETS)} or a .toml file (default: smoke)")
    for option in ("attack", "defense", "targets", "seeds", "rates", "dataset", "data-path", "downstream", "ssl",
                   "backbone"):
        doctor.add_argument(f"--{option}", help=f"as for bench run --{option}")
    doctor.add_argument("--epochs", type=int, help="pretraining epochs")
    doctor.add_argument("--device", help="auto, cpu or cuda[:N] (with --gpu-check, cpu runs the checks on the CPU)")
    doctor.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as for bench run --set")
    doctor.add_argument("--out", default="runs", help="folder whose free disk is reported; --gpu-check writes "
                        "OUT/gpu-check/ (default: runs)")
    doctor.add_argument("--gpu-check", action="store_true",
                        help="exercise every CUDA path of the suite with small sizes; write a JSON and markdown report")
    doctor.add_argument("--seconds", type=float, default=40.0, help=argparse.SUPPRESS)  # measurement budget
    doctor.set_defaults(reference=None, removal_control=None, download=False, checkpoint=None, trigger=None,
                        trigger_size=None, trigger_dir=None)
    return ap


def _carried_options(dataset: dict, name: str) -> dict:
    """The preset's dataset options that loader ``name`` takes by name (``limit_train_per_class`` survives
    ``--dataset npz`` on a cifar10 preset; the synthetic generator's ``train_per_class`` does not)."""
    options = dataset.get("options", {})
    if name == dataset.get("name"):
        return options
    try:
        accepted = inspect.signature(get_registry().get("dataset", name)).parameters
    except (BenchError, TypeError, ValueError):  # unknown loaders fail later with the known names
        return {}
    return {k: v for k, v in options.items() if k in accepted and accepted[k].kind != inspect.Parameter.VAR_KEYWORD}


def _trigger_dir_attacks(attacks: list[str]) -> list[str]:
    """The attacks of the grid that take ``--trigger-dir`` (a ``trigger_dir`` option)."""
    registry = get_registry()
    takers = [a for a in attacks if "trigger_dir" in {f.name for f in fields(registry.get("attack", a).Config)}]
    if not takers:
        raise BenchError(f"--trigger-dir gives each target class its own trigger, but none of the attacks "
                         f"{', '.join(attacks)} takes one: add --attack multi_target, or give htba one file "
                         "with --trigger PATH")
    return takers


def _check_folder(path: Path, option: str) -> None:
    """Refuse an output folder that cannot be written (a file, a broken link, read-only), before any stage."""
    check_output_folder(path, option)


def _config_from_args(args: argparse.Namespace):
    data = read_preset(args.preset)
    grid = data.setdefault("grid", {})
    if args.attack:
        grid["attacks"] = _csv(args.attack)
    if args.defense:
        grid["defenses"] = _csv(args.defense)
    if args.targets:
        grid["targets"] = _targets(args.targets)
    if args.seeds is not None:
        grid["seeds"] = _ints(args.seeds, "seeds")
    if args.rates is not None:
        grid["rates"] = _rates(args.rates)
    if args.reference is not None:
        grid["reference"] = args.reference
    if args.removal_control is not None:
        grid["removal_control"] = args.removal_control
    if args.dataset:
        data["dataset"] = {"name": args.dataset, "options": _carried_options(data.get("dataset", {}), args.dataset)}
    if args.data_path:
        data.setdefault("dataset", {})["path"] = args.data_path
    if args.download:
        data.setdefault("dataset", {}).setdefault("options", {})["download"] = True
    if args.downstream:
        name, _, path = args.downstream.partition(":")
        data["downstream"] = {"name": name, **({"path": path} if path else {})}
    if args.ssl:
        data.setdefault("ssl", {})["method"] = args.ssl
        data["ssl"]["method_options"] = {}
        data = with_method_recipe(data, args.ssl)
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
    if args.trigger_dir:
        for attack in _trigger_dir_attacks(grid.get("attacks", ["htba"])):
            data.setdefault("attack", {}).setdefault(attack, {})["trigger_dir"] = args.trigger_dir
    if args.device:
        data["device"] = args.device
    for assignment in args.set:
        apply_override(data, assignment)
    return build_config(data)


def cmd_run(args: argparse.Namespace) -> int:
    from benchsuite.engine.executors import ExecutorSpec
    from benchsuite.engine.grid import GridRunner

    config = _config_from_args(args)
    _check_folder(Path(args.out), "--out")
    executor = ExecutorSpec(kind=args.executor, workers=args.workers, cluster=args.cluster,
                            slurm_partition=args.slurm_partition, timeout_min=args.slurm_time,
                            gpus_per_node=args.slurm_gpus, cpus_per_task=args.slurm_cpus)
    with naming_plugins(get_registry(), "bench run"):  # a dataset loader runs here
        runner = GridRunner(config, get_registry(), Path(args.out))
    if args.dry_run:
        from benchsuite.engine.dryrun import print_plan

        print_plan(runner)
        return 0
    if not args.max_hours > 0:
        raise BenchError(f"--max-hours {args.max_hours} must be > 0, e.g. --max-hours 12")
    check_cost(config, runner.registry, runner.run_dir, args.yes, args.max_hours)
    with naming_plugins(runner.registry, "bench run"):
        results = runner.run(executor)
    if distributed.is_main():  # torchrun: one table, from rank 0
        print_tables(results)
    console.log(f"results: {runner.run_dir / 'results.csv'}  (again: bench table {runner.run_dir})")
    return 0


def print_tables(results, fmt: str = "rich", layouts: tuple[str, ...] = DEFAULT_LAYOUTS) -> None:
    """Print each layout that has rows in ``results``, in ``fmt``."""
    from rich.console import Console

    for name in layouts:
        title, layout = LAYOUTS[name]
        frame = layout(results)
        if frame is None or frame.empty:
            continue
        if fmt == "markdown":
            print(f"\n**{title}**\n\n{markdown_table(frame)}")
        elif fmt == "latex":
            print(latex_table(frame, title))
        elif fmt == "csv":
            frame.to_csv(sys.stdout, index=False)
        else:
            Console(width=max(console.width, table_width(frame))).print(rich_table(frame, title))
    for line in [*not_applicable_notes(results), *guard_notes(results)]:
        print(line)


def cmd_table(args: argparse.Namespace) -> int:
    layouts = DEFAULT_LAYOUTS if args.layout == "default" else (args.layout,)
    print_tables(load_results(args.run_dir), args.format, layouts)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from benchsuite.reporting.publish import publish

    for path, added in publish(args.run_dir, args.leaderboards).items():
        console.log(f"{path}: {added} new row(s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchsuite.reporting.report import write_report

    path = write_report(args.run_dir, args.output)
    console.log(f"report: {path}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchsuite.reporting.leaderboard import TIDY_FOLDER, read_leaderboards, write_leaderboard, write_tidy

    page = write_leaderboard(args.leaderboards, args.output)
    tidy = write_tidy(read_leaderboards(args.leaderboards), args.leaderboards / TIDY_FOLDER)
    console.log(f"leaderboard: {page}; {len(tidy)} CSV(s), one per metric set, in {args.leaderboards / TIDY_FOLDER}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from benchsuite.engine.scan import scan

    names = _csv(args.defense)
    args.defense = None  # the grid's defenses stay the preset's: a scan does not run them
    args.set = [*args.set, "train.epochs=0"]  # last: the checkpoint is scanned as it is, whatever the preset trains
    config = _config_from_args(args)
    _check_folder(Path(args.out), "--out")
    with naming_plugins(get_registry(), "bench scan"):
        findings, folder = scan(config, get_registry(), Path(args.out), Path(args.checkpoint), names, args.seed)
    table = Table(title=escape(f"bench scan {args.checkpoint}"), title_justify="left")
    for column in ("defense", "verdict", "score", "threshold", "output"):
        table.add_column(column)
    for f in findings:
        verdict = "-" if f.trojaned is None else ("abstained" if not np.isfinite(f.score) else
                                                   ("TROJANED" if f.trojaned else "clean"))
        score = "" if not np.isfinite(f.score) else f"{f.score_name} {f.score:.4g}"
        threshold = "" if not np.isfinite(f.threshold) else f"{f.threshold:.4g}"
        output = f.repaired or ", ".join(f.pictures) or f.note
        table.add_row(f.defense, verdict, score, threshold, escape(output))
    from rich.console import Console

    out = Console(width=max(console.width, 120))  # stdout, as the tables of bench run
    out.print(table)
    for f in findings:
        if f.note and f.trojaned is not None:
            out.print(f"{f.defense}: {escape(f.note)}", highlight=False)
    console.log(f"scan: {folder / 'scan.json'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.gpu_check:
        from benchsuite.tools.gpu_check import gpu_check

        _check_folder(Path(args.out), "--out")
        return gpu_check(Path(args.out) / "gpu-check", args.device)
    from benchsuite.tools.doctor import doctor

    if args.seconds <= 0:
        raise BenchError(f"--seconds {args.seconds} must be > 0")
    return doctor(_config_from_args(args), Path(args.out), args.seconds)


def cmd_list(_: argparse.Namespace) -> int:
    registry = get_registry()
    titles = {"attack": "Attacks [threat kind]", "defense": "Defenses [kind]", "dataset": "Datasets",
              "ssl": "SSL methods", "backbone": "Backbones", "threat_protocol": "Threat kinds (their protocols)",
              "defense_protocol": "Defense kinds (their protocols)"}
    from rich.console import Console
    from rich.markup import escape

    out = Console()
    for section in SECTIONS:
        table = Table(title=escape(titles[section]), title_justify="left")
        for column in ("name", "plugin", "description"):
            table.add_column(column)
        for entry in sorted(registry.items[section].values(), key=lambda e: e.name):
            kind = getattr(entry.obj, {"defense": "kind", "attack": "threat"}.get(section, ""), None)
            desc = escape(f"[{kind}] {entry.description}" if kind else entry.description)
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
    keep_freed_memory()
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a mistyped argument (already one error line)
        return exit_.code if isinstance(exit_.code, int) else 2
    handlers = {"run": cmd_run, "table": cmd_table, "list": cmd_list, "publish": cmd_publish, "report": cmd_report,
                "doctor": cmd_doctor, "scan": cmd_scan, "leaderboard": cmd_leaderboard}
    try:
        return handlers[args.command](args)
    except BenchError as err:
        message = " ".join(str(err).split())  # one line, whatever the message holds
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 2
    except OSError as err:  # a disk that filled, a folder made read-only while a stage ran
        if os.environ.get(SHOW_TRACEBACK):
            raise
        console.print(f"[bold red]error:[/] {escape(describe_os_error(err))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: finished stages are cached; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
