"""A cache entry that cannot be loaded is moved aside, said in one line, and recomputed: every stage kind."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchsuite.api import Defense, Detection, Verdict
from benchsuite.cli import main
from benchsuite.core.cache import StageCache
from benchsuite.reporting.results import TIMING_COLUMNS
from benchsuite.settings.registry import Entry, get_registry
from tests.conftest import TINY_OVERRIDES


@dataclass(frozen=True)
class _NoOptions:
    pass


class _TopFeatureFilter(Defense):
    """A fast filter: removes the tenth of the images with the largest feature sum."""

    name = "test-filter"
    kind = "filter"
    Config = _NoOptions

    def detect(self, ctx) -> Detection:
        scores = ctx.features.sum(1)
        return Detection(scores, scores >= np.quantile(scores, 0.9))


class _CopyingModelDefense(Defense):
    """A fast model defense: flags every encoder and 'repairs' it into a copy."""

    name = "test-model"
    kind = "detector"
    Config = _NoOptions

    def inspect(self, ctx) -> Verdict:
        return Verdict(True, 3.0, flagged=0)

    def repair(self, ctx, verdict):
        return copy.deepcopy(ctx.encoder)


# stage kind -> the file its load reads (every stage the cache holds)
STAGE_FILES = {"dataset": "train_x.npy", "poison": "rows.npy", "patched": "images.npy",
               "pretrain": "encoder.safetensors", "features": "features.npy", "probe": "metrics.json",
               "detect": "detection.npz", "inspect": "verdict.json", "mitigate": "encoder.safetensors"}


def _argv(out: Path) -> list[str]:
    args = ["run", "--defense", "test-filter,test-model", "--out", str(out)]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One tiny run through every stage kind; the fake defenses stay registered for the module."""
    with pytest.MonkeyPatch.context() as mp:
        defenses = get_registry().items["defense"]
        for cls in (_TopFeatureFilter, _CopyingModelDefense):
            mp.setitem(defenses, cls.name, Entry(cls.name, cls, "tests"))
        out = tmp_path_factory.mktemp("repair") / "runs"
        assert main(_argv(out)) == 0
        yield out


def _results(out: Path) -> pd.DataFrame:
    """The results without the cost columns: a recomputed stage records its new cost."""
    results = pd.read_csv(next(p for p in out.iterdir() if p.name != "cache") / "results.csv")
    return results.drop(columns=TIMING_COLUMNS, errors="ignore")


def _entries(out: Path, stage: str) -> list[Path]:
    """The finished entries of ``stage`` whose file a rerun loads (features: those the probe reads)."""
    found = sorted(p for p in (out / "cache" / stage).iterdir() if (p / "DONE").is_file())
    if stage == "features":
        found = [p for p in found if json.loads((p / "DONE").read_text())["name"] in ("train", "val")]
    return found


# every stage kind with a truncated file; a deleted one too where the issue met it (encoders)
@pytest.mark.parametrize("stage, damage", [(stage, "truncate") for stage in sorted(STAGE_FILES)]
                         + [("pretrain", "delete"), ("mitigate", "delete")])
def test_an_unloadable_stage_is_moved_aside_and_recomputed(first_run, tmp_path, capsys, stage, damage):
    out = tmp_path / "runs"
    shutil.copytree(first_run, out)
    shutil.rmtree(next(p for p in out.iterdir() if p.name != "cache") / "cells")  # rerun every cell
    if stage in ("features", "patched"):  # only the probe reads them
        shutil.rmtree(out / "cache" / "probe")
    damaged = _entries(out, stage)
    assert damaged, f"the first run cached no {stage} stage"
    for entry in damaged:
        path = entry / STAGE_FILES[stage]
        if damage == "delete":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    assert main(_argv(out)) == 0
    err = capsys.readouterr().err
    assert err.count("moved aside") == len(damaged), err
    for entry in damaged:
        assert (entry / "DONE").is_file() and (entry / STAGE_FILES[stage]).is_file()
        assert len(list(entry.parent.glob(f"{entry.name}.corrupt-*"))) == 1
    pd.testing.assert_frame_equal(_results(first_run), _results(out))


def test_stage_cache_repairs_a_failed_load_once(tmp_path, capsys):
    cache = StageCache(tmp_path)
    cache.dir("s", "k")
    (cache.dir("s", "k") / "DONE").write_text("{}")
    calls = []

    def load():
        raise ValueError("truncated file")

    def compute():
        calls.append("compute")
        cache.mark_done("s", "k")
        return 7

    assert cache.run("s", "k", load, compute) == 7
    assert calls == ["compute"]
    assert "s/k could not be loaded (truncated file): moved aside" in capsys.readouterr().err.replace("\n", " ")
    entries = sorted(p.name.split("-")[0] for p in (tmp_path / "s").iterdir() if not p.name.startswith("."))
    assert entries == ["k", "k.corrupt"]


def _lock_is_held(path: Path) -> bool:
    """Whether someone holds the flock on ``path`` (a fresh open file description cannot take it)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _pretrain_rank(rank: int, port: int, out: str) -> None:
    import os

    import torch

    from benchsuite.core import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    distributed.setup(torch.device("cpu"))
    cache = StageCache(Path(out))

    def compute() -> bool:
        distributed.barrier()  # both ranks are training now
        held = _lock_is_held(Path(out) / ".locks" / "pretrain" / "k.lock")
        cache.mark_done("pretrain", "k")
        return held

    held = cache.run("pretrain", "k", lambda: None, compute)
    (Path(out) / f"held{rank}.json").write_text(json.dumps(held))


def test_torchrun_pretraining_holds_the_stage_lock(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_pretrain_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    # another `bench run` on the same --out would wait: the lock is held while the ranks train
    assert [json.loads((tmp_path / f"held{r}.json").read_text()) for r in range(2)] == [True, True]
