"""Choosing K: silhouette scores over a K range, smoothed by a sliding window, then the knee (SWK).

The SC code for SWK is not released (spec 7.1 [GAP]); what the slides state is kept: the silhouette
s(i) = (b(i) - a(i)) / max(a(i), b(i)), averaged over neighbouring K values, and Kneedle on the
smoothed curve. The knee is taken on the curve's running maximum (a silhouette curve rises, peaks and
then falls or wanders; its increasing envelope is the concave shape Kneedle is made for), so K is
where the best score so far stops improving quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from benchsuite.core.clustering import kmeans, l2_normalize
from benchsuite.core.errors import BenchError


def silhouette(features: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> float:
    """Mean silhouette of a labelling (Euclidean); a point alone in its cluster scores 0 (as sklearn).

    With fewer than two non-empty clusters the silhouette is undefined; it is 0 then.
    """
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).double()
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    _, lab = torch.unique(lab, return_inverse=True)
    k = int(lab.max()) + 1 if len(lab) else 0
    if k < 2:
        return 0.0
    onehot = torch.nn.functional.one_hot(lab, k).double()
    sizes = onehot.sum(0)
    scores = []
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        sums = torch.cdist(x[rows], x) @ onehot  # (c, k) summed distance to each cluster
        own = lab[rows]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp(min=1)
        others = (sums / sizes).scatter(1, own[:, None], float("inf"))
        b = others.min(1).values
        s = (b - a) / torch.maximum(a, b).clamp(min=1e-12)
        scores.append(torch.where(own_size > 1, s, torch.zeros_like(s)))
    return float(torch.cat(scores).mean())


def sliding_window(values: np.ndarray, window: int) -> np.ndarray:
    """Each point averaged with its neighbours, ``window`` points centred on it (fewer at the ends)."""
    half = window // 2
    return np.array([values[max(0, i - half): i + half + 1].mean() for i in range(len(values))])


def kneedle(ks: np.ndarray, values: np.ndarray) -> int:
    """The knee of the increasing envelope of ``values`` (Satopaa et al. 2011, offline, concave)."""
    envelope = np.maximum.accumulate(values)
    span_y = envelope[-1] - envelope[0]
    if len(ks) == 1 or span_y <= 0:  # flat or falling from the start: the first K is the best
        return int(ks[0])
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (envelope - envelope[0]) / span_y
    return int(ks[int(np.argmax(y - x))])


def best_kmeans(features: np.ndarray, k: int, seed: int, iters: int = 20, restarts: int = 1) -> np.ndarray:
    """Assignments of the lowest-inertia k-means among ``restarts`` seeds (sklearn's n_init)."""
    best, best_inertia = None, np.inf
    for r in range(max(1, restarts)):
        clusters = kmeans(features, k, seed + 1000 * r, niter=iters)
        inertia = float(np.square(clusters.distances, dtype=np.float64).sum())
        if inertia < best_inertia:
            best, best_inertia = clusters.assignments, inertia
    return best


@dataclass
class SWKResult:
    k: int
    ks: list[int]
    scores: list[float]  # silhouette per K
    smoothed: list[float]  # after the sliding window
    window: int

    def to_json(self) -> dict:
        return {"k": self.k, "ks": self.ks, "scores": self.scores, "smoothed": self.smoothed, "window": self.window}


def choose_k(features: np.ndarray, k_min: int, k_max: int, k_step: int, window: int, seed: int,
             iters: int = 20, restarts: int = 1) -> SWKResult:
    """K by SWK over ``range(k_min, k_max + 1, k_step)`` (capped at one image less than the sample)."""
    n = len(features)
    if k_min < 2 or k_step < 1 or window < 1:
        raise BenchError(f"SWK needs k_min >= 2, k_step >= 1 and swk_window >= 1, got {k_min}, {k_step}, {window}")
    ks = np.arange(k_min, min(k_max, n - 1) + 1, k_step)
    if len(ks) == 0:
        raise BenchError(f"no K to try between k_min={k_min} and k_max={k_max} with {n} sampled images: "
                         "raise ratio or lower k_min")
    x = l2_normalize(features)
    scores = np.array([silhouette(x, best_kmeans(x, int(k), seed, iters, restarts)) for k in ks])
    smoothed = sliding_window(scores, window)
    return SWKResult(kneedle(ks, smoothed), ks.tolist(), scores.tolist(), smoothed.tolist(), window)
