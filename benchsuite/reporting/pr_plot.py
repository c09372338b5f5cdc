"""Precision-recall of a filter defense's poison ranking (PatchSearch Figure 5): how far down the
ranked list one must go to catch the poisons, independent of the removal threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from benchsuite.core.checkpoint import save_figure
from benchsuite.eval.detection import ranking
from benchsuite.reporting.tables import display_name


def precision_recall(scores: np.ndarray, poison_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall (fractions) of the top-k ranked images for every k = 1..N."""
    hits = np.cumsum(np.asarray(poison_mask, dtype=bool)[ranking(scores)])
    k = np.arange(1, len(hits) + 1)
    return hits / k, hits / max(1, int(hits[-1]) if len(hits) else 1)


def average_precision(scores: np.ndarray, poison_mask: np.ndarray) -> float:
    """Mean of the precision at the rank of each poison (NaN without poisons)."""
    precision, _ = precision_recall(scores, poison_mask)
    is_poison = np.asarray(poison_mask, dtype=bool)[ranking(scores)]
    return float(precision[is_poison].mean()) if is_poison.any() else float("nan")


def save_pr_curve(folder: Path, defense: str, scores: np.ndarray, poison_mask: np.ndarray, title: str = "") -> Path:
    """Plot the ranking's precision-recall curve to ``folder/<defense>_pr.png``."""
    precision, recall = precision_recall(scores, poison_mask)
    fig = Figure(figsize=(4, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(100 * recall, 100 * precision)
    ax.set_xlabel("recall (%)")
    ax.set_ylabel("precision (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 102)
    ax.set_title(f"{display_name(defense)} ranking, AP {100 * average_precision(scores, poison_mask):.1f}"
                 + (f"\n{title}" if title else ""), fontsize="small")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{defense}_pr.png"
    return save_figure(fig, path)
