"""Output folders a run can write to, and filesystem faults worded as one line that names the fix.

Every stage writes through :func:`benchsuite.core.checkpoint.atomic_write` and marks itself DONE last, so a
fault in the middle of a stage leaves no half-written file in a finished stage: fixing the fault and rerunning
the same command resumes.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from benchsuite.core.errors import BenchError

RESUME = "then rerun the same command (finished stages are kept)"


def check_output_folder(path: Path, option: str) -> None:
    """Refuse an output folder that cannot be written, before anything is computed: a file on the way, a
    dangling or looping symbolic link, a read-only or unwritable folder. A missing folder is created."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError as err:  # Python < 3.13 words a loop this way
            raise BenchError(f"{option} {path} is a symbolic link that loops: point it at a folder or pass "
                             "another path") from err
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise BenchError(f"{option} {path} is a symbolic link that loops: point it at a folder or pass "
                                 "another path") from err
            raise BenchError(f"{option} {path} is a dangling symbolic link (to {os.readlink(path)}): create its "
                             "target or pass another path") from err
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise BenchError(f"{option} {path}: {existing} is a file: pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"{option} {path} cannot be written ({err.strerror}): pass a writable folder") from err


def describe_os_error(err: OSError) -> str:
    """One line for a filesystem fault met while a stage ran (a disk that filled, a folder made read-only)."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}: free some space or pass --out on another disk, {RESUME}"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write{where}: {err.strerror}: make it writable or pass another --out, {RESUME}"
    if err.errno == errno.ELOOP:
        return f"a symbolic link loops{where}: fix the link, {RESUME}"
    return f"{err.strerror or type(err).__name__}{where}: fix the file or folder, {RESUME}"
