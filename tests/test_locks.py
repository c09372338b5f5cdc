"""Two workers, or two `bench run`, contending for one stage: the second waits for the lock, then loads."""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchsuite.core.cache import StageCache
from tests.conftest import TINY_OVERRIDES

STAGE, KEY = "pretrain", "k0"


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)


def _worker(root: str, name: str, hold_until: str | None) -> None:
    """Run the stage in a fresh StageCache; record in ``<root>/<name>.did`` whether it loaded or computed."""
    cache, events = StageCache(Path(root) / "cache"), Path(root)

    def load() -> str:
        return (cache.dir(STAGE, KEY) / "out.txt").read_text()

    def compute() -> str:
        (events / f"{name}.computing").touch()
        if hold_until:  # keep the lock until the test says so
            _wait_for(events / hold_until)
        (cache.dir(STAGE, KEY) / "out.txt").write_text(f"made by {name}")
        cache.mark_done(STAGE, KEY)
        return f"made by {name}"

    result = cache.run(STAGE, KEY, load, compute)
    did = "computed" if (events / f"{name}.computing").exists() else "loaded"
    (events / f"{name}.did").write_text(f"{did}: {result}")


def test_second_worker_waits_for_the_lock_and_loads(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the children run file operations only
    first = ctx.Process(target=_worker, args=(str(tmp_path), "first", "go"))
    first.start()
    _wait_for(tmp_path / "first.computing")  # the first worker holds the stage lock, mid-compute
    second = ctx.Process(target=_worker, args=(str(tmp_path), "second", None))
    second.start()
    try:
        time.sleep(1.0)
        assert second.is_alive() and not (tmp_path / "second.computing").exists(), \
            "the second worker did not wait for the lock"
    finally:
        (tmp_path / "go").touch()
        first.join(30)
        second.join(30)
    assert first.exitcode == 0 and second.exitcode == 0
    assert (tmp_path / "first.did").read_text() == "computed: made by first"
    assert (tmp_path / "second.did").read_text() == "loaded: made by first"


def test_two_bench_runs_on_one_out_train_each_encoder_once(tmp_path):
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "benchsuite.cli", "run", "--attack", "htba", "--defense", "none", "--targets", "0",
            "--seeds", "0", "--out", str(out), *[x for item in TINY_OVERRIDES for x in ("--set", item)]]
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    assert outputs[0][0] == outputs[1][0] and "w/o Defense" in outputs[0][0]  # the same tables
    (log,) = out.glob("*/run.log")  # both runs share the run folder and append to its log
    started = re.findall(r"(pretrain [^:\n]*): started at", log.read_text())
    assert sorted(started) == ["pretrain clean s=0", "pretrain htba t=0 r=1 s=0"], started
    (csv,) = out.glob("*/results.csv")
    assert sorted(pd.read_csv(csv)["defense"]) == ["clean-model", "none"]
    assert not list(out.rglob("*.tmp"))
