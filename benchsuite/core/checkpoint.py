"""Safe, atomic storage of tensors and results."""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from benchsuite.core.errors import BenchError

_TEMP_SUFFIX = ".tmp"


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # no dots: the temp name is split on them


def _temp_path(path: Path) -> Path:
    """``.<name>.<host>.<pid>.<random>.tmp`` beside ``path``: :func:`sweep_temp_files` knows its writer."""
    return path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it into place, fsync the folder.

    The file is created with mode 0666 less the umask (as ``open`` would), not mkstemp's 0600, so
    teammates sharing a run folder can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _writer_is_gone(name: str, host: str, max_age_s: float, age_s: float) -> bool:
    parts = name.rsplit(".", 4)  # [".<target name>", host, pid, random, "tmp"]
    if len(parts) != 5 or not parts[2].isdigit():
        return False
    if parts[1] != host:  # another machine's writer: only when surely dead
        return age_s > max_age_s
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def sweep_temp_files(root: Path, max_age_s: float = 86400.0) -> int:
    """Delete the temporary files of :func:`atomic_write` left under ``root`` by a killed process.

    A temp file of a process on this host that no longer runs goes at once; one from another host
    (a shared filesystem) only when older than ``max_age_s``. Returns how many were deleted.
    """
    host, now, removed = _host(), time.time(), 0
    for tmp in Path(root).rglob(f".*{_TEMP_SUFFIX}"):
        try:
            if tmp.is_file() and _writer_is_gone(tmp.name, host, max_age_s, now - tmp.stat().st_mtime):
                tmp.unlink()
                removed += 1
        except FileNotFoundError:  # its writer finished meanwhile
            continue
    return removed


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """``fig.savefig`` to ``path`` atomically (a reader never sees half a PNG); the format from the suffix."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png"))
    return path


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically."""
    atomic_write(Path(target), lambda tmp: shutil.copyfile(source, tmp))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):  # numpy scalars keep their type (np.int64 -> int, np.bool_ -> bool)
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def save_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=_json_default)))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a flat dict of tensors as safetensors, atomically."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, str(tmp)))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, or a weights-only torch checkpoint holding a state dict."""
    if not path.is_file():
        raise BenchError(f"checkpoint {path} not found: check the path or rerun the stage")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise BenchError(f"checkpoint {path} is corrupt ({err}): delete it and rerun") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message advises unpickling: never repeat it
        raise BenchError(f"checkpoint {path} holds pickled objects, not only tensors: save model.state_dict() "
                         "(torch.save or safetensors) and pass that file") from err
    except Exception as err:  # torch raises many types for a bad file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BenchError(f"checkpoint {path} is not a readable torch file ({first.split('. ')[0]}): "
                         "save a plain state dict or a .safetensors file again") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"checkpoint {path} is not a state dict of tensors: save model.state_dict()")
    return state


def load_into(model: torch.nn.Module, path: Path, prefix: str = "") -> None:
    """Load a state dict (optionally the entries under ``prefix``) into ``model``, strictly."""
    state = load_tensors(path)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise BenchError(f"checkpoint {path} does not match the model ({first}): "
                         "use the same backbone and options it was trained with") from err
