"""Stage cache: every stage's output lives under ``<cache>/<stage>/<key>/`` with a DONE marker.

The key hashes the stage's inputs and config; file inputs (a trigger PNG, a dataset folder, a
start checkpoint) enter it by content (:func:`file_digest`, :func:`path_fingerprint`), not by
name. A stage directory without DONE is unfinished (its partial files, e.g. a pretraining
checkpoint, are what a rerun resumes from); DONE also holds what computing the stage cost
(:mod:`benchsuite.core.cost`), which a load keeps. A finished stage that cannot be loaded is moved
aside to ``<stage>/<key>.corrupt-<time>`` and recomputed. A file lock (``flock`` on
``<cache>/.locks/<stage>/<key>.lock``) keeps two processes from computing the same stage at once; a
filesystem without working ``flock`` (some NFS mounts) needs one writer per ``--out``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from benchsuite.core import cost, distributed
from benchsuite.core.checkpoint import save_json
from benchsuite.core.console import console

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


def keyed_fields(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` without the added fields that still hold their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: keyed_fields(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("keyed_if_set") and getattr(obj, f.name) == _field_default(f))}
    if isinstance(obj, dict):
        return {k: keyed_fields(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(keyed_fields(v) for v in obj)
    return obj


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **_canonical(keyed_fields(obj))}
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


_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes, read in chunks (what a file input contributes to a cache key)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_fingerprint(root: Path) -> str:
    """A digest of every file under ``root``: relative path, size, mtime and ctime (ns), sorted.

    Stat only, so cheap on a large ImageFolder; ctime changes with any write even when the mtime is
    put back. What a stage produces from the folder is then keyed by its content
    (:func:`array_digest`), so a touched but unchanged folder is reloaded and nothing downstream reruns.
    """
    h = hashlib.blake2b(digest_size=16)
    entries = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed while walking
                continue
            entries.append(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}")
    for entry in sorted(entries):
        h.update(entry.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def path_fingerprint(path: str | Path) -> dict[str, str] | None:
    """The resolved path and a digest of what is there (file bytes, or a folder's listing); None if nothing is."""
    resolved = Path(path).expanduser().resolve()
    if resolved.is_file():
        return {"path": str(resolved), "file": file_digest(resolved)}
    if resolved.is_dir():
        return {"path": str(resolved), "folder": folder_fingerprint(resolved)}
    return None


def file_inputs(options: Any) -> dict[str, str]:
    """Content digests of the existing files named by string values in ``options`` (a config dataclass,
    dict or list), by resolved path: a trigger PNG keys the poison by its bytes, wherever it is run from."""
    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value and value != "random":
            path = Path(value).expanduser()
            try:
                if path.is_file():
                    found[str(path.resolve())] = file_digest(path)
            except OSError:  # a name too long or otherwise not a path
                pass

    walk(options)
    return found


def array_digest(*arrays: np.ndarray) -> str:
    """blake2b of the arrays' shapes, dtypes and bytes (the content key of a loaded dataset)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class StageCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.used: list[tuple[str, str]] = []  # every (stage, key) loaded or computed, in order

    def dir(self, stage: str, key: str) -> Path:
        path = self.root / stage / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def is_done(self, stage: str, key: str) -> bool:
        return (self.root / stage / key / "DONE").is_file()

    def meta(self, stage: str, key: str) -> dict[str, Any]:
        """What :meth:`mark_done` recorded for a finished stage."""
        return json.loads((self.root / stage / key / "DONE").read_text())

    def mark_done(self, stage: str, key: str, meta: dict[str, Any] | None = None) -> None:
        """Write the DONE marker with ``meta`` and the stage's cost so far (kept when the stage is loaded)."""
        if distributed.is_main():  # under torchrun rank 0 alone writes
            spent = cost.current(stage, key)
            save_json(self.dir(stage, key) / "DONE", {**(meta or {}), **({"cost": spent.to_dict()} if spent else {})})

    def stage_cost(self, stage: str, key: str) -> cost.StageCost | None:
        """What a finished stage cost when it was computed; None when unknown (cached before costs were kept)."""
        try:
            return cost.StageCost.from_dict(self.meta(stage, key).get("cost"))
        except (OSError, ValueError, AttributeError):
            return None

    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[Path]:
        """Hold an exclusive lock on a stage while computing it.

        The lock file lives in ``<cache>/.locks/``, out of the stage directory, so moving a corrupt
        directory aside keeps it.
        """
        path = self.dir(stage, key)
        lock_file = self.root / ".locks" / stage / f"{key}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_file, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def run(self, stage: str, key: str, load: Callable[[], T], compute: Callable[[], T]) -> T:
        """``load()`` a finished stage, else ``compute()`` it under the stage lock.

        The DONE marker is checked again once the lock is held: another process (a grid worker)
        may have finished the stage while this one waited. A finished stage whose ``load`` fails
        (a truncated or deleted file) is moved aside and computed again. ``compute`` must call
        :meth:`mark_done`. Under torchrun rank 0 holds the lock and decides; it runs the stage
        while the other ranks wait, except pretraining, which every rank computes.
        """
        self.used.append((stage, key))
        compute = self._metered(stage, key, compute)
        if distributed.world_size() > 1:
            if stage in distributed.COLLECTIVE_STAGES:
                return self._run_collective(stage, key, load, compute)
            return distributed.run_stage(load, lambda: self._run(stage, key, load, compute))
        return self._run(stage, key, load, compute)

    @staticmethod
    def _metered(stage: str, key: str, compute: Callable[[], T]) -> Callable[[], T]:
        """``compute`` under a cost meter, which :meth:`mark_done` reads."""
        def metered() -> T:
            with cost.measure(stage, key):
                return compute()

        return metered

    def _run(self, stage: str, key: str, load: Callable[[], T], compute: Callable[[], T]) -> T:
        if self.is_done(stage, key):
            try:
                return load()
            except Exception:  # noqa: BLE001 - retried under the lock, where a second failure repairs
                pass
        with self.lock(stage, key):
            loaded, result = self._load_or_repair(stage, key, load)
            return result if loaded else compute()

    def _load_or_repair(self, stage: str, key: str, load: Callable[[], T]) -> tuple[bool, Any]:
        """With the lock held: (True, loaded) for a finished stage, else (False, None), a corrupt one moved aside."""
        if not self.is_done(stage, key):
            return False, None
        try:
            return True, load()
        except Exception as err:  # noqa: BLE001 - any failure to read a finished stage (truncated npz, bad JSON)
            self._move_aside(stage, key, err)
            return False, None

    def _move_aside(self, stage: str, key: str, err: Exception) -> None:
        path = self.root / stage / key
        aside = path.with_name(f"{key}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(path, aside)
        path.mkdir()  # empty again: ``compute`` (and a defense writing into its workdir) expects it
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        console.print(f"cache: {stage}/{key} could not be loaded ({reason}): moved aside to {aside}, recomputing",
                      soft_wrap=True, highlight=False, markup=False)

    def _run_collective(self, stage: str, key: str, load: Callable[[], T], compute: Callable[[], T]) -> T:
        """A stage every rank computes (pretraining): rank 0 takes the lock, loads or repairs, says which.

        Rank 0 keeps the lock until the ranks have computed the stage together, so another
        ``bench run`` on the same ``--out`` cannot train the same key meanwhile.
        """
        if not distributed.is_main():
            done = distributed.broadcast_object(None)
            return load() if done else compute()
        with self.lock(stage, key):
            with distributed.alone():
                loaded, result = self._load_or_repair(stage, key, load)
            distributed.broadcast_object(loaded)
            return result if loaded else compute()


def code_versions(**versions: int) -> tuple[dict[str, int], ...]:
    """The code versions a stage key carries: () while every one is 0 (the code a key was first made
    with), so keys made before versions existed stay valid; bumping one to 1 recomputes the stage."""
    bumped = {name: int(v) for name, v in sorted(versions.items()) if v}
    return (bumped,) if bumped else ()
