"""Pictures of a detection: the SWK curve, every cluster's reversed trigger and the flagged one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

from benchsuite.sslcleanse.inversion import Inversion
from benchsuite.sslcleanse.swk import SWKResult


def plot_swk(path: Path, swk: SWKResult) -> None:
    """Silhouette per K, its sliding-window average and the chosen K."""
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(swk.ks, swk.scores, "o-", ms=3, alpha=0.5, label="silhouette")
    ax.plot(swk.ks, swk.smoothed, "s-", ms=3, label=f"sliding window ({swk.window} K values)")
    ax.axvline(swk.k, color="crimson", ls="--", label=f"knee: K = {swk.k}")
    ax.set(xlabel="K (clusters)", ylabel="silhouette score", title="SWK: choosing K")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_triggers(path: Path, inv: Inversion, flagged: int, index: float, trojaned: bool, show: int = 8) -> None:
    """The mask norms per cluster (the flagged one in red) and the ``show`` smallest triggers, m * delta."""
    order = np.argsort(inv.norms, kind="stable")[:show]
    fig = Figure(figsize=(max(6.0, 1.2 * len(order)), 4.2))
    grid = fig.add_gridspec(2, len(order), height_ratios=[1.4, 1])
    bars = fig.add_subplot(grid[0, :])
    colours = ["crimson" if c == flagged else "steelblue" for c in range(len(inv.norms))]
    bars.bar(np.arange(len(inv.norms)), inv.norms, color=colours)
    bars.axhline(np.median(inv.norms), color="grey", ls=":", label="median")
    verdict = "trojaned" if trojaned else "benign"
    bars.set(xlabel="cluster", ylabel="mask norm", title=f"anomaly index {index:.2f}: {verdict}")
    bars.legend(fontsize=7)
    for i, c in enumerate(order):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow((inv.masks[c][None] * inv.patterns[c]).transpose(1, 2, 0))
        ax.set_title(f"{c}: {inv.norms[c]:.3f}", fontsize=7, color="crimson" if c == flagged else "black")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_flagged(path: Path, mask: np.ndarray, pattern: np.ndarray, example: np.ndarray, cluster: int) -> None:
    """The reversed trigger of one cluster: mask, pattern, m * delta, and a clean image carrying it."""
    panels = [("mask m", mask, "gray"), ("pattern delta", pattern.transpose(1, 2, 0), None),
              ("m * delta", (mask[None] * pattern).transpose(1, 2, 0), None),
              ("on an image", (1 - mask[..., None]) * example + (mask[None] * pattern).transpose(1, 2, 0), None)]
    fig = Figure(figsize=(8, 2.4))
    axes = fig.subplots(1, 4)
    for ax, (title, img, cmap) in zip(axes, panels):
        ax.imshow(np.clip(img, 0, 1), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"reversed trigger of cluster {cluster}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
