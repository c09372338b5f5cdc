"""``bench doctor``: what this machine has, and how long the chosen preset and grid would take on it."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchsuite.core.console import console
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import get_registry
from benchsuite.tools.projection import (
    DataShape,
    Measurements,
    Stage,
    data_shape,
    duration_text,
    grid_plans,
    measure,
    project,
    total_seconds,
)
from benchsuite.tools.throughput import Rate

GIB = 1024**3
DEFAULT_SECONDS = 40.0  # measurement budget: the whole doctor stays under a minute


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB" if value >= GIB / 10 else f"{value / 1024**2:.0f} MiB"


def _memory() -> tuple[float, float]:
    """(total, available) RAM in bytes; available from /proc/meminfo where there is one."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return float(total), float(available)


def _free_disk(out: Path) -> str:
    existing = next((p for p in (out, *out.resolve().parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(existing)
    return f"{_gib(usage.free)} free of {_gib(usage.total)} (under {existing})"


def _gpus() -> list[tuple[str, str]]:
    rows = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        bf16 = "bf16 yes" if props.major >= 8 else "bf16 emulated (slow): pre-Ampere GPU"
        rows.append((f"GPU {i}", f"{props.name}, {_gib(props.total_memory)}, compute {props.major}.{props.minor}, "
                                 f"{bf16}"))
    return rows


def _faiss() -> str:
    import faiss

    gpu = hasattr(faiss, "StandardGpuResources")
    gpus = faiss.get_num_gpus() if gpu else 0
    if not gpu:
        support = "CPU only (k-means on the CPU; pip install faiss-gpu-cu12 for GPU k-means)"
    else:
        support = f"GPU support, {gpus} GPU(s) visible"
    return f"{getattr(faiss, '__version__', '?')}, {support}"


def _nccl() -> str:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        return "not available (multi-GPU torchrun needs a CUDA build of torch with NCCL)"
    try:
        version = ".".join(map(str, torch.cuda.nccl.version()))
    except (RuntimeError, AttributeError, TypeError):
        version = "?"
    return f"available, NCCL {version}"


def environment(out: Path) -> list[tuple[str, str]]:
    """(item, value) rows: Python, torch, CUDA and GPUs, faiss, NCCL, cores, RAM, free disk under ``out``."""
    cuda = torch.version.cuda
    rows = [("Python", f"{platform.python_version()} ({platform.system()} {platform.machine()})"),
            ("torch", torch.__version__),
            ("CUDA", f"available, {torch.cuda.device_count()} device(s), CUDA {cuda}, "
                     f"cuDNN {torch.backends.cudnn.version()}" if torch.cuda.is_available()
             else f"not available (torch built {'with CUDA ' + cuda if cuda else 'for CPU only'})")]
    rows += _gpus()
    rows += [("faiss", _faiss()), ("NCCL", _nccl())]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows.append(("CPU cores", f"{os.cpu_count()} ({usable} usable here, torch uses {torch.get_num_threads()} "
                              "threads)"))
    total, available = _memory()
    rows.append(("RAM", f"{_gib(available)} available of {_gib(total)}"))
    rows.append(("disk", _free_disk(out)))
    return rows


def _table(title: str, columns: list[str], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="right" if i and column in ("runs", "each", "total") else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _rate_text(rate: Rate) -> str:
    return f"{rate.images_per_s:,.1f} img/s at batch {rate.batch} ({rate.steps} timed step(s))"


def measurement_rows(m: Measurements) -> list[tuple[str, str]]:
    rows = [("SSL training step", _rate_text(m.ssl_step)), ("encoder forward", _rate_text(m.forward))]
    rows += [(f"SSL training step with {name}", _rate_text(rate)) for name, rate in m.training_step.items()]
    if m.classifier_step is not None:
        rows.append(("poison classifier step", _rate_text(m.classifier_step)))
    rows.append(("probe fit + predict", f"{m.probe_s:.2f} s per probe seed and encoder"))
    return rows


def stage_rows(stages: list[Stage]) -> list[tuple[str, ...]]:
    rows = [(s.name, str(s.runs), s.work, duration_text(s.seconds_each), duration_text(s.seconds))
            for s in stages]
    rows.append(("[bold]total[/]", "", "", "", f"[bold]{duration_text(total_seconds(stages))}[/]"))
    return rows


def memory_lines(data: DataShape, cells: int, device: torch.device, out: Path) -> list[str]:
    """Where the grid's arrays go: the stage cache on disk, the training set in memory and on the device."""
    image = data.image_size**2 * 3
    train, cache = data.train * image, (data.train + data.val) * image * 2 + cells * data.train * image
    existing = next((p for p in (out, *out.resolve().parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    _, available = _memory()
    lines = [f"stage cache: about {_gib(cache)} of uint8 arrays (the dataset, its clean and patched copies, one "
             f"poisoned training set per cell) for {_gib(free)} free under {existing}",
             f"memory: the {_gib(train)} training set is held in RAM ({_gib(available)} available)"]
    short = [cache > free, train > available]
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        lines.append(f"GPU: pretraining keeps the {_gib(train)} training set on {device} ({_gib(total)}) besides "
                     "the model and its activations")
        short.append(train > 0.8 * total)
    return [f"[bold red]too little room:[/] {line}" if bad else line for line, bad in zip(lines, short, strict=True)]


def doctor(config: RunConfig, out: Path, seconds: float = DEFAULT_SECONDS, device: torch.device | None = None) -> int:
    """Print the environment, measure this machine on the preset's recipe, print the projected stage times."""
    from benchsuite.settings.validate import check_config
    from benchsuite.stages import resolve_device

    registry = get_registry()
    check_config(config, registry)  # every option of every section, as bench run refuses it
    stdout = Console(width=max(console.width, 140))
    stdout.print(_table("Environment", ["item", "value"], environment(out)))
    data = data_shape(config, registry)
    device = device or resolve_device(config.device)
    g = config.grid
    plans = grid_plans(config, registry, data)  # unknown names and kinds fail here, before the measurement
    console.log(f"measuring {config.ssl.method} / {config.ssl.backbone} at {data.image_size} px on {device} "
                f"(about {seconds:.0f} s)")
    m = measure(config, registry, data, device, seconds, plans)
    stdout.print(_table(f"Measured on {device}", ["what", "throughput"], measurement_rows(m)))
    stages = project(config, registry, data, m, plans)
    title = (f"Projected time: preset {config.preset}, {data.train:,} train / {data.val:,} val images at "
             f"{data.image_size} px ({data.source}); {len(g.attacks)} attack(s) x {len(g.targets)} target(s) x "
             f"{len(g.rates)} rate(s) x {len(g.seeds)} seed(s); defenses: {', '.join(g.defenses)}")
    stdout.print(_table(title, ["stage", "runs", "one run", "each", "total"], stage_rows(stages)))
    for line in memory_lines(data, len(plans), device, out):
        stdout.print(line, highlight=False)
    stdout.print("Upper bounds where marked <=; one process, stages one after the other (--workers N divides "
                 "the grid's cells); measured on random tensors, scaled linearly from the measured batch.")
    return 0
