"""Iterative search for highly poisonous images (PatchSearch §4, PoisonCAM §4.3 and appendix A)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from benchsuite.clustering import Clusters
from benchsuite.errors import BenchError
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.flip import FlipScore, FlipTest, flip_set
from benchsuite.poison_search.locators import Locator
from benchsuite.poison_search.windows import crop_windows

ClusterScore = Literal["max", "sum"]


@dataclass(frozen=True)
class SearchConfig:
    """Search settings; the defaults live in the defense configs."""

    samples_per_iteration: int  # s: images scored per candidate cluster and iteration
    prune_fraction: float  # r: fraction of candidate clusters dropped after each iteration
    cluster_score: ClusterScore  # "max" of its scored images (PatchSearch) or their "sum" (PoisonCAM app. A)
    flip_score: FlipScore  # "into" the candidate's cluster (PatchSearch code) or "any" change
    flip_set_size: int  # images in the flip test set
    prune_at_least_one: bool  # True: search until no cluster is left (paper text); False: PS code's stop

    def __post_init__(self) -> None:
        if self.samples_per_iteration < 1:
            raise BenchError(f"samples_per_iteration={self.samples_per_iteration} must be >= 1")
        if not 0 <= self.prune_fraction < 1:
            raise BenchError(f"prune_fraction={self.prune_fraction} must lie in [0, 1)")
        if self.cluster_score not in ("max", "sum"):
            raise BenchError(f"cluster_score={self.cluster_score!r} is not known: use 'max' or 'sum'")


@dataclass
class SearchResult:
    """Poison scores of the searched images and their candidate windows."""

    scores: np.ndarray  # (N,) float64, -inf where the image was not scored
    windows: np.ndarray  # (N, 4) int64 x, y, w, h of the candidate trigger, -1 rows where not scored
    window: int  # the window side used
    iterations: int
    flip_indices: np.ndarray  # the flip test set

    @property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.scores)

    def ranking(self) -> np.ndarray:
        """All indices, highest score first (ties by index), unscored images last."""
        return np.argsort(-self.scores, kind="stable")

    def top(self, k: int) -> np.ndarray:
        """The ``k`` best scored images (fewer when fewer were scored)."""
        return self.ranking()[: min(k, int(self.scored.sum()))]

    def finds_trigger(self, min_flip_fraction: float) -> bool:
        """The no-trigger guard (not in the papers): does a candidate flip at least this fraction of the flip set?

        Without a trigger the top-k patches are arbitrary crops: the poison classifier cannot learn a
        common pattern and its argmax flags about half of the images. 0 turns the guard off.
        """
        if min_flip_fraction <= 0:
            return True
        best = self.scores[self.scored].max(initial=-np.inf)
        return bool(best >= max(1.0, min_flip_fraction * len(self.flip_indices)))

    def patches(self, images: np.ndarray, k: int) -> np.ndarray:
        """Candidate trigger crops (k, w, w, 3) of the top-``k`` images."""
        top = self.top(k)
        return crop_windows(images[top], self.windows[top])


def _cluster_scores(scores: np.ndarray, members: dict[int, np.ndarray], candidates: list[int],
                    how: ClusterScore) -> np.ndarray:
    out = np.full(len(candidates), -np.inf)
    for i, c in enumerate(candidates):
        s = scores[members[c]]
        s = s[np.isfinite(s)]
        if len(s):
            out[i] = s.max() if how == "max" else s.sum()
    return out


def iterative_search(runner: EncoderRunner, images: np.ndarray, clusters: Clusters, locator: Locator,
                     window: int, cfg: SearchConfig, seed: int) -> SearchResult:
    """Score s random images of every candidate cluster per iteration, then prune the r worst clusters.

    Candidates are located lazily, only for the images the search samples (PoisonCAM §4.2 locates
    every image, which gives the same scores at a far higher cost).
    """
    rng = np.random.default_rng([seed, 17])
    members = {c: clusters.members(c) for c in range(clusters.num_clusters)}
    queues = {c: rng.permutation(m) for c, m in members.items() if len(m)}
    taken = dict.fromkeys(queues, 0)
    candidates = [int(c) for c in rng.permutation(list(queues))]  # random order breaks score ties
    flip_indices = flip_set(clusters, cfg.flip_set_size, rng)
    flip = FlipTest(runner, images, clusters, flip_indices, cfg.flip_score, seed=int(rng.integers(2**31)))
    scores = np.full(len(images), -np.inf)
    windows = np.full((len(images), 4), -1, dtype=np.int64)
    iterations = 0
    while candidates:
        batch = []
        for c in candidates:
            batch.extend(queues[c][taken[c]:taken[c] + cfg.samples_per_iteration])
            taken[c] = min(len(queues[c]), taken[c] + cfg.samples_per_iteration)
        if not batch:
            break
        idx = np.asarray(batch, dtype=np.int64)
        located = locator.locate(runner, images[idx], clusters, clusters.assignments[idx], window)
        scores[idx] = flip.score(crop_windows(images[idx], located.windows), clusters.assignments[idx])
        windows[idx] = located.windows
        iterations += 1
        order = np.argsort(-_cluster_scores(scores, members, candidates, cfg.cluster_score), kind="stable")
        drop = int(cfg.prune_fraction * len(candidates))
        if drop == 0 and not cfg.prune_at_least_one:
            break
        candidates = [candidates[i] for i in order[: len(candidates) - max(drop, 1)]]
    return SearchResult(scores, windows, window, iterations, flip_indices)
