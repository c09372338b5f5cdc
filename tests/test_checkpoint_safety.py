"""A checkpoint whose pickle would run code is refused, and the code never runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchsuite.cli import main
from benchsuite.core.checkpoint import load_tensors
from benchsuite.core.errors import BenchError


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_load_tensors_refuses_a_pickle_that_runs_code(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(BenchError, match="pickled objects, not only tensors"):
        load_tensors(path)
    assert not marker.exists(), "unpickling the checkpoint ran its code"


def test_bench_run_refuses_it_in_one_line(tmp_path, tiny_args, capsys):
    path, marker = _malicious_checkpoint(tmp_path)
    assert main(["run", *tiny_args, "--checkpoint", str(path), "--no-reference"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint") and "state_dict()" in last, last
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert not list((tmp_path / "runs" / "cache").glob("pretrain/*/DONE"))
