"""A seed's numbers do not depend on the machine's thread count or on how fast the process runs, once
``cpu_threads`` pins the count (the smoke preset pins 2, the count the README's numbers were measured with).

Control: without the pin, one thread and two threads give other gradients (CPU kernels split the float
sums of a backward pass by thread), so the comparison can see a difference.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from benchsuite.reporting.results import TIMING_COLUMNS
from tests.conftest import TINY_OVERRIDES


def _start(out: Path, omp_threads: int, pinned: int) -> subprocess.Popen:
    """A tiny htba cell in a fresh process with ``OMP_NUM_THREADS`` (torch's default count) set."""
    argv = [sys.executable, "-m", "benchsuite.cli", "run", "--attack", "htba", "--defense", "none", "--no-reference",
            "--out", str(out)]
    for item in [*TINY_OVERRIDES, f"cpu_threads={pinned}"]:
        argv += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "MKL_NUM_THREADS": str(omp_threads)}
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> tuple[str, pd.DataFrame]:
    """The weights' digest of the run's poisoned encoder and its results (without the timing columns)."""
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    weights = sorted((out / "cache" / "pretrain").glob("*/encoder.safetensors"))
    assert len(weights) == 1
    results = pd.read_csv(next(p for p in out.iterdir() if p.name != "cache") / "results.csv")
    return hashlib.sha256(weights[0].read_bytes()).hexdigest(), results.drop(columns=TIMING_COLUMNS, errors="ignore")


@pytest.mark.slow
def test_pinned_threads_give_identical_numbers_under_any_count_and_a_slowed_process(tmp_path):
    # both at once, so each also runs on cores the other one contends for; the second is paused and resumed
    # every 50 ms while it runs
    one = _start(tmp_path / "a", omp_threads=1, pinned=2)
    two = _start(tmp_path / "b", omp_threads=2, pinned=2)
    while two.poll() is None:
        time.sleep(0.05)
        two.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        two.send_signal(signal.SIGCONT)
    (one_digest, one_results), (two_digest, two_results) = _finish(one, tmp_path / "a"), _finish(two, tmp_path / "b")
    assert one_digest == two_digest
    pd.testing.assert_frame_equal(one_results, two_results)


def test_the_control_one_and_two_threads_give_other_gradients():
    """Without the pin the counts differ in the last bits: the comparison above can see a difference."""
    import torch

    from benchsuite.nets.backbones import small_resnet

    def gradients(threads: int) -> torch.Tensor:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(0)
            net = small_resnet(32, width=8, stem_stride=2)
            x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
            net(x).pow(2).mean().backward()
            return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
        finally:
            torch.set_num_threads(before)

    assert torch.equal(gradients(2), gradients(2))
    assert not torch.equal(gradients(1), gradients(2))
