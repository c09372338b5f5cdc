"""Stage cache: every stage's output lives under ``<cache>/<stage>/<key>/`` with a DONE marker.

The key hashes the stage's inputs and config; a stage directory without DONE is unfinished
(its partial files, e.g. a pretraining checkpoint, are what a rerun resumes from). A file
lock keeps two processes from computing the same stage at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from benchsuite import distributed
from benchsuite.checkpoint import save_json

T = TypeVar("T")


def added_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field added after caches were made: left out of cache keys while it has its default.

    So adding an option to a config dataclass does not invalidate every cached encoder.
    """
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"keyed_if_set": True})


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _fields(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` without the added fields that still hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _fields(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("keyed_if_set") and getattr(obj, f.name) == _field_default(f))}
    if isinstance(obj, dict):
        return {k: _fields(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fields(v) for v in obj)
    return obj


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **_canonical(_fields(obj))}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__array__": hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest(),
                "shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short hex digest of JSON-canonical ``parts`` (dataclasses, dicts, arrays, scalars)."""
    text = json.dumps(_canonical(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def dir(self, stage: str, key: str) -> Path:
        path = self.root / stage / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage: str, key: str) -> bool:
        return (self.root / stage / key / "DONE").is_file()

    def mark_done(self, stage: str, key: str, meta: dict[str, Any] | None = None) -> None:
        if distributed.is_main():  # under torchrun rank 0 alone writes
            save_json(self.dir(stage, key) / "DONE", meta or {})

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[Path]:
        """Hold an exclusive lock on the stage directory while computing it."""
        path = self.dir(stage, key)
        with open(path / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def run(self, stage: str, key: str, load: Callable[[], T], compute: Callable[[], T]) -> T:
        """``load()`` a finished stage, else ``compute()`` it under the stage lock.

        The DONE marker is checked again once the lock is held: another process (a grid worker)
        may have finished the stage while this one waited. ``compute`` must call :meth:`mark_done`.
        Under torchrun rank 0 runs the stage while the other ranks wait, except pretraining, which
        every rank computes (:func:`benchsuite.distributed.run_stage`).
        """
        if distributed.world_size() > 1:
            return distributed.run_stage(stage, lambda: self.is_done(stage, key), load, compute,
                                         lambda: self._run(stage, key, load, compute))
        return self._run(stage, key, load, compute)

    def _run(self, stage: str, key: str, load: Callable[[], T], compute: Callable[[], T]) -> T:
        if self.is_done(stage, key):
            return load()
        with self.lock(stage, key):
            if self.is_done(stage, key):
                return load()
            return compute()
