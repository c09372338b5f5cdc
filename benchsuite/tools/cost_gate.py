"""Before a long ``bench run`` starts: its projected time on this machine, and ``--yes`` above a threshold.

The projection is ``bench doctor``'s (:mod:`benchsuite.tools.projection`), on a shorter measurement. It is
only measured when a cheap floor says the grid could be long (many images x epochs to pretrain), so small
runs start at once; a run whose folder exists already (a resume) is not asked again.
"""

from __future__ import annotations

from pathlib import Path

from benchsuite.core.console import note
from benchsuite.core.errors import BenchError
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry

DEFAULT_MAX_HOURS = 6.0  # a working day's run may start unasked; a week's may not
MEASURE_SECONDS = 6.0  # bench doctor measures 40 s; enough here to price a grid to within tens of percent
# image passes of pretraining below which no grid is priced: at 2,000 images/s (faster than any 2-core CPU
# here) this is under 8 minutes, so a slow measurement would cost more than it tells
FLOOR_IMAGE_PASSES = 1_000_000


def pretrain_image_passes(config: RunConfig, train_images: int) -> int:
    """An upper bound on the images the grid's pretraining pushes through the encoder: every cell's encoder
    and, with ``grid.reference``, the clean one, for every epoch."""
    g = config.grid
    encoders = len(g.attacks) * len(g.targets) * len(g.rates) * len(g.seeds) + (len(g.seeds) if g.reference else 0)
    return encoders * config.train.epochs * train_images


def projected_seconds(config: RunConfig, registry: Registry) -> float | None:
    """The grid's projected wall time here, or None when the floor says it is short."""
    import torch

    from benchsuite.stages import resolve_device
    from benchsuite.tools.projection import data_shape, grid_plans, measure, project, total_seconds

    data = data_shape(config, registry)
    if pretrain_image_passes(config, data.train) < FLOOR_IMAGE_PASSES:
        return None
    device: torch.device = resolve_device(config.device)
    plans = grid_plans(config, registry, data)
    note(f"pricing the grid on {device} (about {MEASURE_SECONDS:.0f} s; --yes skips it)")
    return total_seconds(project(config, registry, data, measure(config, registry, data, device, MEASURE_SECONDS,
                                                                 plans), plans))


def hours_text(seconds: float) -> str:
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def check_cost(config: RunConfig, registry: Registry, run_dir: Path, yes: bool,
               max_hours: float = DEFAULT_MAX_HOURS) -> None:
    """Refuse, in one line, a new grid projected beyond ``max_hours`` here unless ``yes``; note it otherwise."""
    if yes or (run_dir / "config.json").is_file():
        return
    seconds = projected_seconds(config, registry)
    if seconds is None:
        return
    if seconds > max_hours * 3600:
        raise BenchError(f"this grid is projected to take about {hours_text(seconds)} on this machine (over "
                         f"--max-hours {max_hours:g}; `bench doctor` with the same options shows each stage): "
                         "pass --yes to run it, or shrink it (fewer seeds, targets or epochs)")
    note(f"projected time on this machine: about {hours_text(seconds)} (ignoring what the cache holds)")
