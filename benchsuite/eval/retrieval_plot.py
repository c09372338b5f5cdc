"""Retrieval curves of the filter defenses (PoisonCAM Figure 4): IoU and catch rate of the top-k windows vs k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend state

from benchsuite.tables import display_name

CSV_SUFFIX = "_retrieval.csv"
PLOT_NAME = "retrieval.png"


def plot_retrieval(curves: dict[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    """IoU and CR (percent) against k, one line per curve; a curve of NaN (no trigger boxes) is marked n/a."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    ks = sorted({int(k) for curve in curves.values() for k in curve["k"]})
    for ax, column, label in zip(axes, ("iou", "catch_rate"), ("IoU (%)", "CR (%)")):
        for name, curve in curves.items():
            values = curve[column].to_numpy(dtype=float)
            legend = display_name(name) + ("" if np.isfinite(values).any() else " (n/a: no trigger boxes)")
            ax.plot(curve["k"], values, marker="o", label=legend)
        ax.set_xscale("log")
        if ks:  # label the k values themselves, not powers of ten
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xticks([], minor=True)
            ax.set_xlim(ks[0] / 1.3, ks[-1] * 1.3)
        ax.set_xlabel("top-k retrieved")
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


def save_retrieval(folder: Path, name: str, curve: dict[str, list[float]], title: str = "") -> Path:
    """Write ``<name>_retrieval.csv`` in ``folder`` and redraw ``retrieval.png`` over every curve there
    (so a cell's plot compares its filter defenses, as Figure 4 does); returns the plot's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(curve).to_csv(folder / f"{name}{CSV_SUFFIX}", index=False)
    curves = {p.name[: -len(CSV_SUFFIX)]: pd.read_csv(p) for p in sorted(folder.glob(f"*{CSV_SUFFIX}"))}
    return plot_retrieval(curves, folder / PLOT_NAME, title)
