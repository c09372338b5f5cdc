"""Choosing the window size w without knowing the trigger: the RSD heuristic (PatchSearch §5.2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from benchsuite.core.errors import BenchError
from benchsuite.poison_search.search import SearchResult


def relative_std(scores: np.ndarray) -> float:
    """std / mean of the scored images' poison scores; 0 when the mean is not positive (no signal)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 2 or s.mean() <= 0:
        return 0.0
    return float(s.std() / s.mean())


def choose_window(search: Callable[[int], SearchResult], sides: Sequence[int],
                  min_flip_fraction: float = 0.0) -> tuple[SearchResult, dict[int, float]]:
    """Run ``search(w)`` for every distinct side and keep the result with the largest RSD (first on ties).

    A window whose best candidate fails the no-trigger guard (``SearchResult.finds_trigger``) gets
    RSD 0: otherwise a window that flips one image once in the whole search (mostly-zero scores)
    has the largest RSD of all.
    """
    sides = sorted(set(int(w) for w in sides))
    if not sides:
        raise BenchError("window='auto' needs at least one candidate in rsd_windows")
    results = {w: search(w) for w in sides}
    rsd = {w: relative_std(r.scores) if r.finds_trigger(min_flip_fraction) else 0.0 for w, r in results.items()}
    best = max(sides, key=lambda w: (rsd[w], -sides.index(w)))
    return results[best], rsd
