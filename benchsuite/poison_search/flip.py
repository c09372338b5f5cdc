"""The flip test: paste a candidate patch on hard-to-flip images and count cluster flips (PatchSearch §4)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from benchsuite.core.clustering import Clusters
from benchsuite.core.errors import BenchError
from benchsuite.poison_search.defaults import COMPAT_MODES, Compat
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.windows import paste_patches

FlipScore = Literal["into", "any"]


def flip_set(clusters: Clusters, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the images closest to their centres: ``size // l`` per cluster (at least one).

    With ``size`` < l clusters, the closest image of ``size`` random clusters (PatchSearch code).
    Empty clusters contribute nothing.
    """
    if size < 1:
        raise BenchError(f"flip_set_size={size}: the flip test needs at least one image")
    count = clusters.num_clusters
    chosen = np.arange(count) if size >= count else np.sort(rng.choice(count, size, replace=False))
    per_cluster = max(1, size // count)
    picked = []
    for c in chosen:
        members = clusters.members(c)
        picked.extend(members[np.argsort(clusters.distances[members], kind="stable")[:per_cluster]])
    return np.asarray(picked, dtype=np.int64)


def draw_corners(count: int, side: int, height: int, width: int, generator: torch.Generator,
                 compat: Compat = "paper") -> torch.Tensor:
    """(count, 2) uniform (x, y) top-left corners of a ``side`` patch: in [0, W - side] (every valid
    position) or, ``compat`` "code", in [0, W - side) as PatchSearch's ``randint`` (0 when side = W)."""
    last = 0 if compat == "code" else 1
    return torch.stack([torch.randint(0, max(1, width - side + last), (count,), generator=generator),
                        torch.randint(0, max(1, height - side + last), (count,), generator=generator)], 1)


def assign_raw(clusters: Clusters, features: np.ndarray) -> np.ndarray:
    """Nearest centre of un-normalised ``features`` (the PatchSearch code's flip-test assignment)."""
    _, idx = clusters.index.search(np.ascontiguousarray(features, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


class FlipTest:
    """Scores candidate patches by the cluster flips they cause on a fixed flip set.

    ``mode`` "into" (PatchSearch code, default): flip images assigned to the candidate's cluster
    after pasting minus those assigned to it before (can be negative). "any": flip images whose
    cluster changed at all (PoisonCAM's wording). Each paste goes to an independent uniform
    top-left corner over all valid positions, on the raw [0, 1] image (PatchSearch pastes on the
    normalised tensor: the same thing, as normalisation is per pixel). ``compat`` "code": corners
    leave out the last position and the pasted images are assigned by their raw features.
    """

    def __init__(self, runner: EncoderRunner, images: np.ndarray, clusters: Clusters, indices: np.ndarray,
                 mode: FlipScore = "into", seed: int = 0, compat: Compat = "paper") -> None:
        if mode not in ("into", "any"):
            raise BenchError(f"flip_score={mode!r} is not known: use 'into' or 'any'")
        if compat not in COMPAT_MODES:
            raise BenchError(f"compat={compat!r} is not known: use one of {', '.join(COMPAT_MODES)}")
        if len(indices) == 0:
            raise BenchError("the flip set is empty: the clustering produced no non-empty cluster")
        self.runner, self.clusters, self.mode, self.compat = runner, clusters, mode, compat
        self.base = runner.unit(images[indices])  # (F, 3, H, W)
        self.original = torch.from_numpy(clusters.assignments[indices])
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def size(self) -> int:
        return len(self.base)

    def score(self, patches: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Poison score (float64) of each uint8 patch (n, w, w, 3) whose source image is in cluster ``targets``."""
        n, side = len(patches), patches.shape[1]
        f, height, width = self.size, self.base.shape[2], self.base.shape[3]
        if side > min(height, width):
            raise BenchError(f"patch of {side}px does not fit the {height}x{width} flip images: lower the window")
        targets_t = torch.from_numpy(np.asarray(targets, dtype=np.int64))
        out = np.zeros(n, dtype=np.float64)
        for sl in self.runner.chunks(n, per_item=f):
            c = sl.stop - sl.start
            corners = draw_corners(c * f, side, height, width, self.generator, self.compat)
            canvas = self.base.repeat(c, 1, 1, 1)  # candidate-major: row i * f + j = flip image j
            pasted = self.runner.unit(patches[sl]).repeat_interleave(f, 0)
            paste_patches(canvas, pasted, corners.to(canvas.device))
            features = self.runner.embed(canvas)
            eta = assign_raw(self.clusters, features) if self.compat == "code" else self.clusters.assign(features)[0]
            eta = torch.from_numpy(eta).view(c, f)
            t = targets_t[sl, None]
            if self.mode == "into":
                counts = (eta == t).sum(1) - (self.original[None] == t).sum(1)
            else:
                counts = (eta != self.original[None]).sum(1)
            out[sl] = counts.numpy()
        return out
