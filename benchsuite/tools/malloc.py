"""Keep freed tensor buffers inside the process (glibc), instead of handing them back to the kernel.

By default glibc serves every allocation above its mmap threshold (128 KiB, growing to at most
32 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when freed; a training step
allocates and frees the same large activation buffers every time, so each step faults them in
again page by page. On 2 cores a 64 px smoke run spent a third of its wall time in the kernel
that way. Raising the mmap and trim thresholds keeps those pages mapped and reused; the cost is
that the process keeps its peak heap instead of shrinking after a stage.

:func:`keep_freed_memory` runs at the start of every ``bench`` command. It sets the thresholds in
this process (``mallopt``) and in the environment, which glibc reads when a worker process
starts (executors, torchrun ranks, data-loading pools). ``BENCH_MALLOC=default`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 2**31 - 1  # mallopt takes an int: the largest threshold it can be given
ENV_THRESHOLDS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OPT_OUT = "BENCH_MALLOC"


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds here and for child processes; True when it took effect."""
    if sys.platform != "linux" or os.environ.get(OPT_OUT) == "default":
        return False
    for name in ENV_THRESHOLDS:
        os.environ.setdefault(name, str(KEEP_BYTES))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
