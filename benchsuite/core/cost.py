"""What each stage costs: wall and CPU time, peak host and CUDA memory, the device, encoder forwards.

:func:`measure` wraps a stage's computation (:meth:`benchsuite.core.cache.StageCache.run` does it for
every stage); :func:`current` gives the open meter's figures so far, which ``mark_done`` writes into
the stage's DONE marker, so a cached stage keeps the cost it had when it ran. A stage computed inside
another one (the features a detection needs) is its own stage: its times and forwards are subtracted
from the outer stage's, while the outer stage's peaks include it.

Peak host memory is the resident set size sampled every :data:`SAMPLE_S` seconds by a background
thread (``/proc/self/statm``); where there is no ``/proc`` it is the process's peak so far
(``ru_maxrss``). CPU time is this process's, plus that of child processes it waited for.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

SAMPLE_S = 0.05  # RSS sampling interval
_MB = 1024 * 1024

# per-defense cost columns of results.csv (README, "Results columns"), filled by :func:`row_costs`
COST_COLUMNS = ["cost_defense_s", "cost_cpu_s", "cost_ms_per_image", "cost_forward_images", "cost_pretrain_s",
                "cost_peak_rss_mb", "cost_peak_cuda_mb", "cost_device"]


@dataclass(frozen=True)
class StageCost:
    """One stage's own cost (stages computed inside it excluded from the times and forwards)."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_cuda_mb: float | None  # None when the stage ran no CUDA work
    forward_images: int  # images passed through the encoder by the filter defenses' search (EncoderRunner)
    device: str  # "cuda" or "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> StageCost | None:
        """The cost recorded in a DONE marker; None when there is none (a stage cached before costs were kept)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{f.name: data[f.name] for f in fields(cls)})
        except (KeyError, TypeError):
            return None


# -- counting encoder forwards -------------------------------------------------------------------

_forwards = 0  # images passed through an encoder in this process so far


def count_forwards(images: int) -> None:
    """Count ``images`` more encoder forwards (EncoderRunner calls it for every batch it prepares)."""
    global _forwards
    _forwards += int(images)


# -- probes ---------------------------------------------------------------------------------------

def _cpu_s() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


_STATM = "/proc/self/statm"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """The resident set size now (Linux), else the process's peak so far."""
    try:
        with open(_STATM) as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _cuda() -> Any:
    """``torch.cuda`` when this process has initialised CUDA, else None (torch is never imported here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


# -- meters ---------------------------------------------------------------------------------------

class Meter:
    """The running cost of one stage; see :func:`measure`."""

    def __init__(self, stage: str, key: str, cuda_start: int | None = None) -> None:
        self.stage, self.key = stage, key
        self.inner_wall = self.inner_cpu = 0.0  # inclusive totals of the stages computed inside this one
        self.inner_forwards = 0
        self.peak_rss = rss_bytes()
        self.peak_cuda = 0
        self.cuda_start = cuda_start  # CUDA bytes allocated at the start (None: CUDA not initialised then)
        self.wall0, self.cpu0, self.forwards0 = time.perf_counter(), _cpu_s(), _forwards

    def totals(self) -> tuple[float, float, int]:
        """Wall seconds, CPU seconds and forwards since the start, inner stages included."""
        return time.perf_counter() - self.wall0, _cpu_s() - self.cpu0, _forwards - self.forwards0

    def cuda_peak(self) -> int | None:
        """Peak CUDA bytes allocated during the stage; None when it ran no CUDA work."""
        cuda = _cuda()
        if cuda is not None:
            self.peak_cuda = max(self.peak_cuda, cuda.max_memory_allocated())
        # the peak is reset at the start to what was allocated then: more means the stage allocated
        return self.peak_cuda if self.peak_cuda > (self.cuda_start or 0) else None

    def snapshot(self) -> StageCost:
        """The stage's own cost so far."""
        wall, cpu, forwards = self.totals()
        self.peak_rss = max(self.peak_rss, rss_bytes())
        cuda = self.cuda_peak()
        return StageCost(wall_s=round(max(0.0, wall - self.inner_wall), 4),
                         cpu_s=round(max(0.0, cpu - self.inner_cpu), 4),
                         peak_rss_mb=round(self.peak_rss / _MB, 1),
                         peak_cuda_mb=None if cuda is None else round(cuda / _MB, 1),
                         forward_images=max(0, forwards - self.inner_forwards),
                         device="cpu" if cuda is None else "cuda")


_stack: list[Meter] = []  # the open meters, outermost first (one process runs its stages in one thread)
_sampler: tuple[int, threading.Thread, threading.Event] | None = None  # (pid, thread, stop)


def _sample(stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_S):
        rss = rss_bytes()
        for meter in list(_stack):
            meter.peak_rss = max(meter.peak_rss, rss)


def _start_sampler() -> None:
    global _sampler
    if _sampler is not None and _sampler[0] == os.getpid() and _sampler[1].is_alive():
        return
    stop = threading.Event()
    thread = threading.Thread(target=_sample, args=(stop,), name="benchsuite-rss", daemon=True)
    thread.start()
    _sampler = (os.getpid(), thread, stop)


def _stop_sampler() -> None:
    global _sampler
    if _sampler is not None and _sampler[0] == os.getpid():
        _sampler[2].set()
        _sampler[1].join()
    _sampler = None


@contextmanager
def measure(stage: str, key: str) -> Iterator[Meter]:
    """Meter the block as the computation of stage ``key``; nested blocks are stages of their own."""
    cuda = _cuda()
    if cuda is not None:  # the outer stages keep their peak so far; this one starts from now
        peak = cuda.max_memory_allocated()
        for outer in _stack:
            outer.peak_cuda = max(outer.peak_cuda, peak)
        cuda.reset_peak_memory_stats()
    meter = Meter(stage, key, None if cuda is None else cuda.memory_allocated())
    _stack.append(meter)
    _start_sampler()
    try:
        yield meter
    finally:
        _stack.remove(meter)
        wall, cpu, forwards = meter.totals()
        meter.peak_rss = max(meter.peak_rss, rss_bytes())
        peak_cuda = meter.cuda_peak() or 0
        if _stack:
            outer = _stack[-1]
            outer.inner_wall += wall
            outer.inner_cpu += cpu
            outer.inner_forwards += forwards
            for m in _stack:
                m.peak_rss = max(m.peak_rss, meter.peak_rss)
                m.peak_cuda = max(m.peak_cuda, peak_cuda)
        else:
            _stop_sampler()


def current(stage: str, key: str) -> StageCost | None:
    """The cost so far of the open meter of ``stage`` ``key`` (innermost first); None when none is open."""
    for meter in reversed(_stack):
        if (meter.stage, meter.key) == (stage, key):
            return meter.snapshot()
    return None


# -- per-defense columns --------------------------------------------------------------------------

def _sum(values: Iterable[float]) -> float:
    values = list(values)
    return round(sum(values), 3) if values else math.nan


def row_costs(defense: list[StageCost | None], pretrain: list[StageCost | None],
              filtered_images: int | None = None) -> dict[str, Any]:
    """The ``cost_*`` columns of one results row.

    ``defense``: the costs of the defense's own stages; ``pretrain``: of the pretraining of the
    encoder the row evaluates; ``filtered_images``: the images a filter defense processed (gives
    ``cost_ms_per_image`` and ``cost_forward_images``). A stage cached before costs were recorded
    (None) leaves the columns it enters empty.
    """
    row: dict[str, Any] = dict.fromkeys(COST_COLUMNS, math.nan)
    if defense and all(c is not None for c in defense):
        known = [c for c in defense if c is not None]
        row["cost_defense_s"] = _sum(c.wall_s for c in known)
        row["cost_cpu_s"] = _sum(c.cpu_s for c in known)
        if filtered_images:
            row["cost_ms_per_image"] = round(1000 * row["cost_defense_s"] / filtered_images, 3)
            row["cost_forward_images"] = sum(c.forward_images for c in known)
    if pretrain and all(c is not None for c in pretrain):
        row["cost_pretrain_s"] = _sum(c.wall_s for c in pretrain if c is not None)
    stages = [c for c in [*defense, *pretrain] if c is not None]
    if stages:
        row["cost_peak_rss_mb"] = max(c.peak_rss_mb for c in stages)
        cuda = [c.peak_cuda_mb for c in stages if c.peak_cuda_mb is not None]
        row["cost_peak_cuda_mb"] = max(cuda) if cuda else math.nan
        row["cost_device"] = "+".join(sorted({c.device for c in stages}))
    return row
