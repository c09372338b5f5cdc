"""Where the grid's cells run: in this process, in worker processes (one GPU each), or through submitit.

Every executor runs the job it is given (the grid's :func:`benchsuite.engine.grid.run_cell_job`, a module-level
function, so worker processes and submitit can pickle it by name), which computes one cell through the
stage cache and writes its rows to ``<run>/cells/``; workers that need the same stage (the clean encoder
of a seed) wait on its lock and then load it. This module does not import the grid.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchsuite.core.errors import BenchError

if TYPE_CHECKING:
    from benchsuite.settings.config import RunConfig
    from benchsuite.stages import Cell

EXECUTORS = ("local", "submitit")
CellJob = Callable[["RunConfig", str, "Cell", Any], list[dict[str, Any]]]  # (config, out, cell, gpus) -> rows


@dataclass(frozen=True)
class ExecutorSpec:
    """How to run the cells. Not part of a run's identity: any executor gives the same results."""

    kind: str = "local"  # local | submitit
    workers: int = 1  # local: processes at once (at most one per GPU when GPUs are present)
    cluster: str | None = None  # submitit: None = SLURM if available, else local; or slurm | local | debug
    slurm_partition: str | None = None
    timeout_min: int = 24 * 60
    gpus_per_node: int = 1
    cpus_per_task: int = 8

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise BenchError(f"unknown executor {self.kind!r}: use one of {', '.join(EXECUTORS)}")
        if self.workers < 1:
            raise BenchError(f"--workers {self.workers} must be at least 1")


def _threads_per_worker(workers: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


def execute(job: CellJob, config: RunConfig, out: Path, cells: list[Cell], spec: ExecutorSpec,
            log_dir: Path) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    """Run ``job(config, out, cell, gpus)`` for each of ``cells`` with ``spec``; yield (cell, rows) as each
    finishes (in any order). ``gpus`` is a queue of free GPU indices when worker processes share GPUs."""
    if spec.kind == "submitit":
        yield from _submitit(job, config, out, cells, spec, log_dir)
        return
    if spec.workers == 1 or len(cells) <= 1:
        for cell in cells:
            yield cell, job(config, str(out), cell, None)
        return
    n_gpus = torch.cuda.device_count()
    workers = min(spec.workers, n_gpus) if n_gpus else spec.workers
    context = mp.get_context("spawn")
    manager = context.Manager() if n_gpus else None
    gpus = None
    if manager is not None:
        gpus = manager.Queue()
        for i in range(n_gpus):
            gpus.put(i)
    else:
        _threads_per_worker(workers)
    # one fresh process per cell, so each sees only its own GPU
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(job, config, str(out), cell, gpus): cell for cell in cells}
        for future in as_completed(futures):
            yield futures[future], future.result()
    if manager is not None:
        manager.shutdown()


def _submitit(job: CellJob, config: RunConfig, out: Path, cells: list[Cell], spec: ExecutorSpec,
              log_dir: Path) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    import submitit

    executor = submitit.AutoExecutor(folder=log_dir, cluster=spec.cluster)
    params: dict[str, Any] = {"timeout_min": spec.timeout_min, "cpus_per_task": spec.cpus_per_task,
                              "name": "benchsuite"}
    if executor.cluster != "local" and executor.cluster != "debug":
        params["gpus_per_node"] = spec.gpus_per_node
    if spec.slurm_partition:
        params["slurm_partition"] = spec.slurm_partition
    executor.update_parameters(**params)
    jobs = {executor.submit(job, config, str(out.resolve()), cell, None): cell for cell in cells}
    for finished in submitit.helpers.as_completed(list(jobs)):
        try:
            rows = finished.result()
        except Exception as err:  # a failed job: say where its log is, keep the finished cells
            raise BenchError(f"cell {jobs[finished].label} failed in submitit job {finished.job_id} "
                             f"(log in {log_dir}): {str(err).strip().splitlines()[-1]}") from err
        yield jobs[finished], rows
