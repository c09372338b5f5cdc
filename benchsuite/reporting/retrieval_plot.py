"""Retrieval curves of the filter defenses (PoisonCAM Figure 4): IoU and catch rate of the top-k windows vs k,
over every top-k image (PoisonCAM's variant) and over the top-k's poisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

from benchsuite.core.checkpoint import atomic_write, save_figure
from benchsuite.reporting.tables import display_name

CSV_SUFFIX = "_retrieval.csv"
PLOT_NAME = "retrieval.png"


# solid: PoisonCAM Figures 4-5 (every top-k window scored, a non-poison as 0); dashed: over the top-k's poisons only
VARIANTS = (("_all", "-", "all top-k"), ("", "--", "top-k poisons"))


def plot_retrieval(curves: dict[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    """IoU and CR (percent) against k, two lines per curve: solid over every top-k image (a non-poison counting 0,
    as PoisonCAM Figures 4-5), dashed over the top-k's poisons; a curve of NaN (no trigger boxes) is marked n/a."""
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    ks = sorted({int(k) for curve in curves.values() for k in curve["k"]})
    for ax, column, label in zip(axes, ("iou", "catch_rate"), ("IoU (%)", "CR (%)")):
        for i, (name, curve) in enumerate(curves.items()):
            for suffix, style, variant in VARIANTS:
                if column + suffix not in curve:  # a CSV written before the zero-counting variant
                    continue
                values = curve[column + suffix].to_numpy(dtype=float)
                legend = f"{display_name(name)}, {variant}" + \
                    ("" if np.isfinite(values).any() else " (n/a: no trigger boxes)")
                ax.plot(curve["k"], values, marker="o", linestyle=style, color=f"C{i}", label=legend)
        ax.set_xscale("log")
        if ks:  # label the k values themselves, not powers of ten
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xticks([], minor=True)
            ax.set_xlim(ks[0] / 1.3, ks[-1] * 1.3)
        ax.set_xlabel("top-k retrieved")
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
        ax.legend(fontsize="x-small")
    variants = "solid: all top-k windows, non-poisons as 0 (PoisonCAM Fig. 4); dashed: the top-k's poisons only"
    fig.suptitle(f"{title}\n{variants}" if title else variants, fontsize="small")
    return save_figure(fig, path)


def save_retrieval(folder: Path, name: str, curve: dict[str, list[float]], title: str = "") -> Path:
    """Write ``<name>_retrieval.csv`` in ``folder`` and redraw ``retrieval.png`` over every curve there
    (so a cell's plot compares its filter defenses, as Figure 4 does); returns the plot's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(curve)
    # atomic: a sibling defense redrawing this folder's plot never reads half a CSV (temp files end in .tmp)
    atomic_write(folder / f"{name}{CSV_SUFFIX}", lambda tmp: frame.to_csv(tmp, index=False))
    curves = {p.name[: -len(CSV_SUFFIX)]: pd.read_csv(p) for p in sorted(folder.glob(f"*{CSV_SUFFIX}"))}
    return plot_retrieval(curves, folder / PLOT_NAME, title)
