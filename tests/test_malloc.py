"""glibc keeps freed tensor buffers: far fewer page faults for the same repeated allocations."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchsuite.tools.malloc import ENV_THRESHOLDS, OPT_OUT

# allocate, touch and free 64 MiB tensors (above glibc's largest dynamic mmap threshold, 32 MiB);
# print this process's minor page faults over the last 30 rounds. The first rounds are left out:
# while the heap grows, even a tuned process faults a few buffers in (8-10 of 40 on some machines).
PROBE = """
import resource, sys
from benchsuite.tools.malloc import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "tuned" else False
import torch
torch.zeros(1)
for i in range(40):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20)
    x.fill_(1.0)
    del x
print(int(took), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _faults(mode: str, **env: str) -> tuple[int, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_THRESHOLDS and k != OPT_OUT}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, "OMP_NUM_THREADS": "1", **env}).stdout.split()
    return int(out[0]), int(out[1])


def test_tuned_process_stops_faulting_in_freed_buffers():
    _, default_faults = _faults("default")
    took, tuned_faults = _faults("tuned")
    assert took == 1
    assert default_faults > 300_000  # 30 x 16,384 pages: each buffer is faulted in again
    assert tuned_faults < default_faults / 20  # the same as MALLOC_*_THRESHOLD_ in the environment


def test_opt_out_keeps_glibc_defaults():
    took, faults = _faults("tuned", **{OPT_OUT: "default"})
    assert took == 0 and faults > 300_000


def test_worker_processes_inherit_the_thresholds():
    probe = "from benchsuite.tools.malloc import keep_freed_memory as k; import os, sys; k(); " \
            "print(os.environ['MALLOC_MMAP_THRESHOLD_'], os.environ['MALLOC_TRIM_THRESHOLD_'])"
    clean = {k: v for k, v in os.environ.items() if k not in ENV_THRESHOLDS and k != OPT_OUT}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=clean)
    assert out.stdout.split() == [str(2**31 - 1)] * 2
