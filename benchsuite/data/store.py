"""Memory-mapped array store: stage outputs as ``.npy`` files opened copy-on-write, and resumable decoding.

A cached image array is opened with ``np.load(path, mmap_mode="c")``: a dataset larger than RAM trains,
and the processes, workers and torchrun ranks of one machine share its pages in the page cache. Copy-on-write
rather than read-only, so a consumer that writes into its array (or hands it to ``torch.from_numpy``) keeps
working as with an in-memory array, and its writes never reach the file.

A poisoned training set is stored as the rows the attack changed and their indices; opened, it is a
copy-on-write map of the clean training file with those rows written over it, so only their pages are private.

:func:`decode_into` fills a preallocated ``.npy`` map chunk by chunk in a process pool, recording the chunks
done in a progress file, so a killed decode resumes where it stopped.

No torch at import: the decoding workers import this module.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import multiprocessing
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from benchsuite.api.data import ImageDataset, Splits

_READ = 1 << 22  # bytes hashed or copied at a time


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    from benchsuite.core.checkpoint import atomic_write  # torch: only in the process that stores

    atomic_write(path, write)


def is_whole_file(array: Any) -> bool:
    """True for an array as :func:`open_array` returned it: the map of a whole ``.npy`` file, unsliced."""
    return isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and bool(array.filename)


def open_array(path: Path) -> np.ndarray:
    """The array in an ``.npy`` file, memory-mapped copy-on-write (a truncated file raises).

    Marked as a stage's array, which nobody writes into: :func:`copy_on_write` maps its file afresh.
    """
    array = np.load(path, mmap_mode="c")
    array.stage_array = True
    return array


def copy_on_write(array: np.ndarray) -> np.ndarray:
    """A writable copy of ``array``: a fresh copy-on-write map of its file when it is a stage's array (only
    the pages then written become private, the rest stays shared), else an in-memory copy."""
    if is_whole_file(array) and getattr(array, "stage_array", False):
        return np.load(array.filename, mmap_mode="c")
    return array.copy()


def save_array(path: Path, array: np.ndarray, chunk_rows: int = 1024) -> None:
    """Write ``array`` to ``path`` atomically, ``chunk_rows`` rows at a time (a memmap is never read whole).

    An array that is already the whole map of a file (a finished decode) is moved, not copied.
    """
    path = Path(path)
    if is_whole_file(array):
        source = Path(array.filename)
        if source.resolve() == path.resolve():
            return
        if source.stat().st_dev == path.parent.stat().st_dev:
            os.replace(source, path)
            return

    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
        rows = max(1, chunk_rows)
        for start in range(0, len(array), rows):
            out[start:start + rows] = array[start:start + rows]
        out.flush()
        del out

    def save_small(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a path not ending in .npy would get the suffix added
            np.save(handle, np.asarray(array))

    _atomic_write(path, save_small if array.ndim == 0 or array.size == 0 else write)


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an ``.npy`` file from its header."""
    mapped = np.load(path, mmap_mode="r")  # parses the header, raises on a truncated file; maps, reads nothing
    if not mapped.flags.c_contiguous:
        raise ValueError(f"{path} is not in C order")
    return tuple(mapped.shape), mapped.dtype, int(mapped.offset)


def digest(*parts: np.ndarray | Path) -> str:
    """:func:`benchsuite.core.cache.array_digest` of arrays, where a ``Path`` part is an ``.npy`` file read in chunks.

    The same digest as hashing the loaded arrays, without mapping them: hashing a 19 GB store adds
    nothing to the process's resident memory.
    """
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, Path):
            shape, dtype, offset = _npy_layout(part)
            h.update(f"{shape}{dtype.str}".encode())
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            with open(part, "rb") as handle:
                handle.seek(offset)
                read = 0
                while chunk := handle.read(_READ):
                    h.update(chunk)
                    read += len(chunk)
            if read != expected:
                raise ValueError(f"{part} holds {read} data bytes, expected {expected}: truncated")
        else:
            a = np.ascontiguousarray(part)
            h.update(f"{a.shape}{a.dtype.str}".encode())
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# -- poisoned sets: the changed rows over the clean map -----------------------------------------
def changed_rows(base: np.ndarray, poisoned: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
    """Indices of the rows where ``poisoned`` differs from ``base``, compared ``chunk_rows`` at a time."""
    if poisoned.shape != base.shape:
        raise ValueError(f"poisoned set {poisoned.shape} does not match the training set {base.shape}")
    found = []
    for start in range(0, len(base), chunk_rows):
        a, b = base[start:start + chunk_rows], poisoned[start:start + chunk_rows]
        found.append(start + np.flatnonzero((a != b).reshape(len(a), -1).any(1)))
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def save_rows(folder: Path, base: np.ndarray, poisoned: np.ndarray) -> np.ndarray:
    """Store the rows of ``poisoned`` that differ from ``base`` (``rows.npy``) and their indices (``index.npy``)."""
    index = changed_rows(base, poisoned)
    save_array(Path(folder) / "index.npy", index)
    save_array(Path(folder) / "rows.npy", np.asarray(poisoned[index]))
    return index


def with_rows(base: np.ndarray, index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """:func:`copy_on_write` of ``base`` with ``rows`` at ``index``."""
    fresh = copy_on_write(base)
    fresh[index] = rows
    return fresh


def open_rows(folder: Path, base: np.ndarray) -> np.ndarray:
    """The poisoned set :func:`save_rows` stored in ``folder``, over the clean ``base``."""
    index = np.load(Path(folder) / "index.npy")
    rows = np.load(Path(folder) / "rows.npy")
    if len(index) != len(rows) or (len(index) and (index.min() < 0 or index.max() >= len(base))):
        raise ValueError(f"{folder}: {len(index)} indices for {len(rows)} rows of a set of {len(base)}")
    return with_rows(base, index, rows)


# -- resumable chunked decoding into a map -----------------------------------------------------
def _read_progress(path: Path) -> set[int]:
    """Chunk numbers recorded as done (a torn last line, from a kill mid-write, is ignored)."""
    if not path.is_file():
        return set()
    lines = path.read_text().split("\n")[:-1]  # the text after the last newline is a torn write
    return {int(line) for line in lines if line.strip().isdigit()}


def decode_into(folder: Path, name: str, total: int, row_shape: tuple[int, ...], dtype: np.dtype | str,
                work: Callable[[Path, int, int, Any], None], chunks: Sequence[Any],
                extra: dict[str, tuple[tuple[int, ...], str]] | None = None, workers: int = 1,
                label: str = "decoding", fingerprint: str = "") -> dict[str, np.ndarray]:
    """Fill ``<folder>/<name>.npy`` (``total`` rows of ``row_shape``) chunk by chunk; resumable.

    ``chunks[i]`` is ``(start, payload)``; ``work(folder, i, start, payload)``, a module-level function
    (spawn-safe), writes rows ``start...`` of ``<name>.partial.npy`` (and of each ``extra`` array,
    ``<key>.partial.npy`` of (total, *shape), dtype) through :func:`open_partial`. The chunks done are
    appended to ``<name>.progress``; a rerun with the same ``fingerprint`` decodes only the others. When all
    are done the partial files are renamed to ``<name>.npy`` (and ``<key>.npy``) and returned, mapped.
    ``workers`` > 1 decodes in a spawn pool.
    """
    from benchsuite.core.console import progress_bar

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: ((total, *row_shape), np.dtype(dtype).str)}
    arrays.update({k: ((total, *shape), np.dtype(dt).str) for k, (shape, dt) in (extra or {}).items()})
    finals = {k: folder / f"{k}.npy" for k in arrays}
    if all(p.is_file() for p in finals.values()):
        return {k: open_array(p) for k, p in finals.items()}
    progress, meta_file = folder / f"{name}.progress", folder / f"{name}.meta.json"
    meta = {"arrays": {k: [list(s), d] for k, (s, d) in arrays.items()}, "chunks": len(chunks),
            "fingerprint": fingerprint}
    partials = {k: folder / f"{k}.partial.npy" for k in arrays}
    fresh = not (meta_file.is_file() and json.loads(meta_file.read_text()) == meta
                 and all(p.is_file() for p in partials.values()))
    if fresh:
        progress.unlink(missing_ok=True)
        for k, (shape, dt) in arrays.items():
            np.lib.format.open_memmap(partials[k], mode="w+", dtype=np.dtype(dt), shape=shape).flush()
        _atomic_write(meta_file, lambda tmp: tmp.write_text(json.dumps(meta)))
    done = _read_progress(progress)
    todo = [i for i in range(len(chunks)) if i not in done]
    ends = [start for start, _ in chunks[1:]] + [total]
    rows = {i: ends[i] - chunks[i][0] for i in range(len(chunks))}  # images per chunk
    with progress_bar(label, total=total, start=total - sum(rows[i] for i in todo)) as advance, \
            open(progress, "a") as log:
        for i in _run(work, folder, [(i, *chunks[i]) for i in todo], workers):
            log.write(f"{i}\n")
            log.flush()
            advance(rows[i])
    for k, partial in partials.items():
        os.replace(partial, finals[k])
    progress.unlink(missing_ok=True)
    meta_file.unlink(missing_ok=True)
    return {k: open_array(p) for k, p in finals.items()}


def _call(args: tuple[Callable[..., None], Path, int, int, Any]) -> int:
    work, folder, i, start, payload = args
    work(folder, i, start, payload)
    return i


def _run(work: Callable[..., None], folder: Path, jobs: list[tuple[int, int, Any]], workers: int) -> Iterable[int]:
    """Yield each job's chunk number once its rows are written (in this process, or a spawn pool).

    A process pool executor, not ``multiprocessing.Pool``: a worker that dies (killed, out of memory) fails
    the decode with an error instead of hanging it; the chunks done stay recorded.
    """
    tasks = [(work, folder, i, start, payload) for i, start, payload in jobs]
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_call, tasks)
        return
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"))
    try:
        for future in as_completed([pool.submit(_call, task) for task in tasks]):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def open_partial(folder: Path, name: str) -> np.ndarray:
    """A worker's writable map of ``<folder>/<name>.partial.npy`` (write rows, then ``flush``)."""
    return np.load(Path(folder) / f"{name}.partial.npy", mmap_mode="r+")


def remove_tree(folder: Path) -> None:
    """Delete a decode folder once its arrays were moved out (ignores what is already gone)."""
    shutil.rmtree(folder, ignore_errors=True)


# -- the dataset stage --------------------------------------------------------------------------
SPLIT_ARRAYS = ("train_x", "train_y", "val_x", "val_y")


def save_splits(folder: Path, splits: Splits, with_digest: bool = True) -> str | None:
    """Store ``splits`` in ``folder`` as ``.npy`` files and ``classes.json``; return their content digest.

    The digest is the one :func:`benchsuite.core.cache.array_digest` gives the arrays (train x/y, val x/y, the
    classes as JSON, the geometries), streamed from the files.
    """
    folder = Path(folder)
    arrays = dict(zip(SPLIT_ARRAYS, (splits.train.images, splits.train.labels, splits.val.images,
                                     splits.val.labels), strict=True))
    for name, part in (("train", splits.train), ("val", splits.val)):
        if part.native_geometry is not None:
            arrays[f"{name}_geometry"] = part.native_geometry
    for name, array in arrays.items():
        save_array(folder / f"{name}.npy", array)
    classes = json.dumps(splits.classes)
    _atomic_write(folder / "classes.json", lambda tmp: tmp.write_text(classes))
    if not with_digest:
        return None
    geometry = [folder / f"{k}.npy" for k in arrays if k.endswith("_geometry")]
    return digest(*(folder / f"{k}.npy" for k in SPLIT_ARRAYS), np.array(classes), *geometry)


def load_splits(folder: Path) -> Splits:
    """The splits :func:`save_splits` stored: images memory-mapped, the small arrays read."""
    folder = Path(folder)
    classes = json.loads((folder / "classes.json").read_text())

    def part(name: str) -> ImageDataset:
        geometry = folder / f"{name}_geometry.npy"
        return ImageDataset(open_array(folder / f"{name}_x.npy"), np.load(folder / f"{name}_y.npy"), classes,
                            np.load(geometry) if geometry.is_file() else None)

    return Splits(part("train"), part("val"))


def extract_npz_member(file: Path, key: str, out: Path) -> np.ndarray:
    """Array ``key`` of the ``.npz`` ``file`` as the map of ``out`` (an ``.npy``), decompressed in a stream.

    The array is never held whole in memory; an ``out`` already there (a finished earlier extraction) is
    reused. An empty or Fortran-ordered array is read into memory instead.
    """
    out = Path(out)
    if out.is_file():
        return open_array(out)
    with zipfile.ZipFile(file) as archive, archive.open(f"{key}.npy") as source:
        version = np.lib.format.read_magic(source)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(source)
        if fortran or dtype.hasobject or 0 in shape or not shape:
            with np.load(file, allow_pickle=False) as d:
                return d[key]

        def write(tmp: Path) -> None:
            offset = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape).offset
            with open(tmp, "r+b") as target:
                target.seek(offset)
                shutil.copyfileobj(source, target, _READ)
                if target.tell() != offset + int(np.prod(shape)) * dtype.itemsize:
                    raise EOFError(f"{key}.npy in {file} is shorter than its header says")

        out.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(out, write)
    return open_array(out)
