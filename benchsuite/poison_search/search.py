"""Iterative search for highly poisonous images (PatchSearch §4, PoisonCAM §4.3 and appendix A)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from benchsuite.core.clustering import Clusters, l2_normalize
from benchsuite.core.console import progress_bar
from benchsuite.core.errors import BenchError
from benchsuite.poison_search.defaults import CLUSTER_SCORES, COMPAT_MODES, Compat
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.flip import FlipScore, FlipTest, flip_set
from benchsuite.poison_search.locators import Located, Locator
from benchsuite.poison_search.windows import crop_windows

ClusterScore = Literal["max", "sum", "total"]  # defaults.CLUSTER_SCORES


@dataclass(frozen=True)
class SearchConfig:
    """Search settings; the defaults live in the defense configs."""

    samples_per_iteration: int  # s: images scored per candidate cluster and iteration
    prune_fraction: float  # r: fraction of candidate clusters dropped after each iteration
    cluster_score: ClusterScore  # see :func:`cluster_scores`
    flip_score: FlipScore  # "into" the candidate's cluster (PatchSearch code) or "any" change
    flip_set_size: int  # images in the flip test set
    prune_at_least_one: bool  # True: search until no cluster is left (paper text); False: PS code's stop
    compat: Compat = "paper"  # "code": the official PatchSearch code's behaviours (defaults.py docstring)

    def __post_init__(self) -> None:
        if self.samples_per_iteration < 1:
            raise BenchError(f"samples_per_iteration={self.samples_per_iteration} must be >= 1")
        if not 0 <= self.prune_fraction < 1:
            raise BenchError(f"prune_fraction={self.prune_fraction} must lie in [0, 1)")
        if self.cluster_score not in CLUSTER_SCORES:
            raise BenchError(f"cluster_score={self.cluster_score!r} is not known: "
                             f"use one of {', '.join(CLUSTER_SCORES)}")
        if self.compat not in COMPAT_MODES:
            raise BenchError(f"compat={self.compat!r} is not known: use one of {', '.join(COMPAT_MODES)}")


@dataclass
class SearchResult:
    """Poison scores of the searched images and their candidate windows."""

    scores: np.ndarray  # (N,) float64, -inf where the image was not scored
    windows: np.ndarray  # (N, 4) int64 x, y, w, h of the candidate trigger, -1 rows where not scored
    window: int  # the window side used
    iterations: int
    flip_indices: np.ndarray  # the flip test set
    unscored_score: float = -np.inf  # where unscored images rank: last (-inf) or at 0 (PatchSearch code)

    @property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.scores)

    @property
    def ranked_scores(self) -> np.ndarray:
        """The scores with unscored images at ``unscored_score``: the ranking a Detection reports."""
        return np.where(self.scored, self.scores, self.unscored_score)

    def ranking(self) -> np.ndarray:
        """All indices, highest ranked score first (ties by index)."""
        return np.argsort(-self.ranked_scores, kind="stable")

    def top(self, k: int) -> np.ndarray:
        """The ``k`` best ranked scored images (fewer when fewer were scored): only they have a window."""
        order = self.ranking()
        return order[self.scored[order]][:k]

    @property
    def best_flip_share(self) -> float:
        """The best candidate's score as a share of the flip set (the quantity the no-trigger guard tests)."""
        best = self.scores[self.scored].max(initial=-np.inf)
        return float(best / len(self.flip_indices)) if len(self.flip_indices) and np.isfinite(best) else float("nan")

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


def cluster_scores(scores: np.ndarray, members: dict[int, np.ndarray], candidates: list[int],
                   how: ClusterScore, current: np.ndarray, unscored_as_zero: bool = False) -> np.ndarray:
    """Score of each candidate cluster; -inf for a cluster with nothing to count.

    "max": best score of its images scored so far (PatchSearch); "sum": sum of the scores of its
    images scored in this iteration, ``current`` (PoisonCAM app. A), so a cluster whose queue ran
    out is pruned first; "total": sum of all its scores so far. ``unscored_as_zero`` (PatchSearch
    code) counts the cluster's unscored images as 0 for "max" and "total".
    """
    out = np.full(len(candidates), -np.inf)
    for i, c in enumerate(candidates):
        m = members[c]
        s = scores[m]
        if how == "sum":
            s = s[current[m]]
        elif unscored_as_zero:
            s = np.where(np.isfinite(s), s, 0.0)
        else:
            s = s[np.isfinite(s)]
        if len(s):
            out[i] = s.max() if how == "max" else s.sum()
    return out


def survivors(candidates: int, cfg: SearchConfig) -> int:
    """Candidate clusters kept after pruning the ``prune_fraction`` worst; 0 ends the search.

    Paper: at least one is pruned, until none is left. PatchSearch code (``compat`` "code" or
    ``prune_at_least_one`` False): stop once ``int(r x candidates)`` is 0 (<= 3 clusters at r = 25 %).
    """
    drop = int(cfg.prune_fraction * candidates)
    if drop == 0 and (cfg.compat == "code" or not cfg.prune_at_least_one):
        return 0
    return candidates - max(drop, 1)


def planned_iterations(candidates: int, cfg: SearchConfig) -> int:
    """How many iterations the search runs from ``candidates`` clusters if no queue runs dry (for progress)."""
    count = 0
    while candidates > 0:
        remaining = survivors(candidates, cfg)
        count += 1
        if remaining >= candidates:  # a rule that prunes nothing: the search stops on dry queues
            break
        candidates = remaining
    return count


def mean_centre_targets(features: np.ndarray, clusters: Clusters) -> tuple[Clusters, np.ndarray]:
    """PatchSearch code's Grad-CAM head and targets: ``clusters`` with the cluster means of the
    L2-normalised features as centres (the index is kept), and each image's argmax cosine to them."""
    step = 8192  # rows at a time: (N, l) similarities at ImageNet scale would take gigabytes
    sums = np.zeros((clusters.num_clusters, features.shape[1]), dtype=np.float64)
    for start in range(0, len(features), step):
        np.add.at(sums, clusters.assignments[start:start + step], l2_normalize(features[start:start + step]))
    counts = np.bincount(clusters.assignments, minlength=clusters.num_clusters)[:, None]
    means = (sums / np.maximum(counts, 1)).astype(np.float32)
    unit_means = l2_normalize(means)
    targets = np.concatenate([(l2_normalize(features[start:start + step]) @ unit_means.T).argmax(1)
                              for start in range(0, len(features), step)])
    return replace(clusters, centres=means), targets.astype(np.int64)


def _all_features(runner: EncoderRunner, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.embed(runner.unit(images[sl])) for sl in runner.chunks(len(images))])


def iterative_search(runner: EncoderRunner, images: np.ndarray, clusters: Clusters, locator: Locator,
                     window: int, cfg: SearchConfig, seed: int, features: np.ndarray | None = None,
                     on_located: Callable[[np.ndarray, Located, np.ndarray], None] | None = None) -> SearchResult:
    """Score s random images of every candidate cluster per iteration, then prune the r worst clusters.

    Candidates are located lazily, only for the images the search samples (PoisonCAM §4.2 locates
    every image, which gives the same scores at a far higher cost). ``features`` (the clustered
    ones) are used only by ``compat`` "code", for the Grad-CAM targets; computed when not given.
    ``on_located(indices, located, scores)`` sees each located batch (the filter keeps the top
    images' maps for its pictures).
    """
    code = cfg.compat == "code"
    rng = np.random.default_rng([seed, 17])
    members = {c: clusters.members(c) for c in range(clusters.num_clusters)}
    queues = {c: rng.permutation(m) for c, m in members.items() if len(m)}
    taken = dict.fromkeys(queues, 0)
    candidates = [int(c) for c in rng.permutation(list(queues))]  # random order breaks score ties
    flip_indices = flip_set(clusters, cfg.flip_set_size, rng)
    flip = FlipTest(runner, images, clusters, flip_indices, cfg.flip_score, seed=int(rng.integers(2**31)),
                    compat=cfg.compat)
    head, targets = clusters, clusters.assignments
    if code:
        head, targets = mean_centre_targets(_all_features(runner, images) if features is None else features, clusters)
    scores = np.full(len(images), -np.inf)
    windows = np.full((len(images), 4), -1, dtype=np.int64)
    current = np.zeros(len(images), dtype=bool)
    iterations = 0
    label = f"{getattr(locator, 'name', 'filter')} search iterations"
    with progress_bar(label, total=planned_iterations(len(candidates), cfg)) as advance:
        while candidates:
            batch = []
            for c in candidates:
                batch.extend(queues[c][taken[c]:taken[c] + cfg.samples_per_iteration])
                taken[c] = min(len(queues[c]), taken[c] + cfg.samples_per_iteration)
            if not batch:
                break
            idx = np.asarray(batch, dtype=np.int64)
            located = locator.locate(runner, images[idx], head, targets[idx], window)
            scores[idx] = flip.score(crop_windows(images[idx], located.windows), clusters.assignments[idx])
            windows[idx] = located.windows
            if on_located is not None:
                on_located(idx, located, scores[idx])
            current[:] = False
            current[idx] = True
            iterations += 1
            ranked = cluster_scores(scores, members, candidates, cfg.cluster_score, current, unscored_as_zero=code)
            order = np.argsort(-ranked, kind="stable")
            candidates = [candidates[i] for i in order[: survivors(len(candidates), cfg)]]
            advance(1, info=f"{len(candidates)} clusters left")
    return SearchResult(scores, windows, window, iterations, flip_indices, 0.0 if code else -np.inf)
