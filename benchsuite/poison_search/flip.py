"""The flip test: paste a candidate patch on hard-to-flip images and count cluster flips (PatchSearch §4)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from benchsuite.clustering import Clusters
from benchsuite.errors import BenchError
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


class FlipTest:
    """Scores candidate patches by the cluster flips they cause on a fixed flip set.

    ``mode`` "into" (PatchSearch code, default): flip images assigned to the candidate's cluster
    after pasting minus those assigned to it before (can be negative). "any": flip images whose
    cluster changed at all (PoisonCAM's wording). Each paste goes to an independent uniform
    top-left corner over all valid positions, on the raw [0, 1] image (PatchSearch pastes on the
    normalised tensor: the same thing, as normalisation is per pixel).
    """

    def __init__(self, runner: EncoderRunner, images: np.ndarray, clusters: Clusters, indices: np.ndarray,
                 mode: FlipScore = "into", seed: int = 0) -> None:
        if mode not in ("into", "any"):
            raise BenchError(f"flip_score={mode!r} is not known: use 'into' or 'any'")
        if len(indices) == 0:
            raise BenchError("the flip set is empty: the clustering produced no non-empty cluster")
        self.runner, self.clusters, self.mode = runner, clusters, mode
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
            corners = torch.stack([torch.randint(0, width - side + 1, (c * f,), generator=self.generator),
                                   torch.randint(0, height - side + 1, (c * f,), generator=self.generator)], 1)
            canvas = self.base.repeat(c, 1, 1, 1)  # candidate-major: row i * f + j = flip image j
            pasted = self.runner.unit(patches[sl]).repeat_interleave(f, 0)
            paste_patches(canvas, pasted, corners.to(canvas.device))
            eta, _ = self.clusters.assign(self.runner.embed(canvas))
            eta = torch.from_numpy(eta).view(c, f)
            t = targets_t[sl, None]
            if self.mode == "into":
                counts = (eta == t).sum(1) - (self.original[None] == t).sum(1)
            else:
                counts = (eta != self.original[None]).sum(1)
            out[sl] = counts.numpy()
        return out
