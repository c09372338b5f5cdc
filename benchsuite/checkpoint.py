"""Safe, atomic storage of tensors and results."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from benchsuite.errors import BenchError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    except Exception as err:  # torch raises many types for a bad file
        raise BenchError(f"checkpoint {path} cannot be loaded safely ({err}): "
                         "save a plain state dict (weights only) or a .safetensors file") from err
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
