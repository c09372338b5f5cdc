"""Faults in the middle of a run (issue #27): a disk that fills, a folder made read-only, a plugin that raises.

Each ends in one ``error:`` line with exit code 2, keeps every stage that finished, and leaves the cache such
that rerunning the same command after the fault is gone gives the numbers of an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd
import pytest

import benchsuite.cli as cli
import benchsuite.engine.grid as grid
from benchsuite.api.hookspecs import hookimpl
from benchsuite.attacks.htba import HTBA
from benchsuite.cli import main
from benchsuite.reporting.results import TIMING_COLUMNS
from benchsuite.settings.registry import build_registry, discover_plugins
from tests.conftest import TINY_OVERRIDES

ARGS = [a for item in TINY_OVERRIDES for a in ("--set", item)] + ["--no-reference"]


def _run(out: Path) -> int:
    return main(["run", "--out", str(out), *ARGS])


def _results(out: Path) -> pd.DataFrame:
    run_dir = next(p for p in out.iterdir() if p.name != "cache")
    frame = pd.read_csv(run_dir / "results.csv")
    return frame.drop(columns=[c for c in [*TIMING_COLUMNS, "figures"] if c in frame.columns])


def _error_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert _run(out) == 0
    return _results(out)


def _failing_replace(stage: str, code: int, calls: list[str]):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if f"{os.sep}cache{os.sep}{stage}{os.sep}" in str(dst):
            calls.append(str(dst))
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *args, **kwargs)

    return replace


@pytest.mark.parametrize("stage, code, message", [
    ("probe", errno.ENOSPC, r"no space left on the device .*probe.*free some space"),
    ("features", errno.EROFS, r"cannot write .*features.*Read-only file system.*make it writable"),
])
def test_a_fault_in_a_stage_is_one_line_and_the_rerun_matches(tmp_path, capsys, monkeypatch, uninterrupted, stage,
                                                             code, message):
    import re

    calls: list[str] = []
    monkeypatch.setattr(os, "replace", _failing_replace(stage, code, calls))
    assert _run(tmp_path) == 2
    errors = _error_lines(capsys)
    assert calls, "the fault was never injected"
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    cache = tmp_path / "cache"
    assert (cache / "pretrain").is_dir() and list(cache.glob("pretrain/*/DONE")), "the finished stages are gone"
    assert not list(cache.glob(f"{stage}/*/DONE")), "the faulted stage was marked finished"
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name], "half-written files were left behind"
    monkeypatch.undo()
    assert _run(tmp_path) == 0
    pd.testing.assert_frame_equal(_results(tmp_path), uninterrupted)


class BrokenAttack(HTBA):
    name = "broken"
    description = "raises while it poisons"

    def poison(self, train, targets, rate, seed):
        return {"images": train.images}["labels"]  # a plugin's bug: KeyError


class BrokenPlugin:
    @hookimpl
    def benchsuite_attacks(self):
        return [BrokenAttack]


def test_a_plugin_that_raises_is_named_and_the_other_cells_are_kept(tmp_path, capsys, monkeypatch):
    registry = build_registry([*discover_plugins()[0], ("broken-plugin", BrokenPlugin())])
    monkeypatch.setattr(cli, "get_registry", lambda: registry)
    monkeypatch.setattr(grid, "get_registry", lambda: registry)
    assert main(["run", "--out", str(tmp_path), *ARGS, "--attack", "htba,broken"]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1, errors
    line = errors[0]
    assert "plugin 'broken-plugin'" in line and "KeyError" in line and "'labels'" in line, line
    assert "test_faults.py" in line and "in poison" in line, line  # where in the plugin
    assert "cell broken" in line and "finished stages are kept" in line, line
    run_dir = next(p for p in tmp_path.iterdir() if p.name != "cache")
    assert [p.name for p in (run_dir / "cells").iterdir()], "the htba cell that finished first was not kept"
    assert list((tmp_path / "cache").glob("probe/*/DONE"))
    monkeypatch.setenv("BENCH_TRACEBACK", "1")  # the original exception for the plugin's author
    with pytest.raises(KeyError):
        main(["run", "--out", str(tmp_path), *ARGS, "--attack", "htba,broken"])
