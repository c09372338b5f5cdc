"""The learning curve of a run: probe metrics of the poisoned and the clean encoder at chosen epochs.

``<run>/curve.csv`` has one row per (cell, target, model, epoch); ``<run>/figures/curve.png`` plots
clean-data ACC and patched-data ASR against the epoch, the poisoned model solid, the clean one dashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from benchsuite.core.checkpoint import atomic_write

CURVE_FILE = "curve.csv"
CURVE_FIGURE = Path("figures") / "curve.png"
MODELS = ("poisoned", "clean")  # the threat encoder (no defense) and the clean reference encoder

COLUMNS = ["dataset", "cell", "attack", "targets", "target", "rate", "seed", "model", "epoch", "clean_acc",
           "clean_asr", "clean_fp", "patched_acc", "patched_asr", "patched_fp", "epochs", "encoder_key"]


def save_curve(run_dir: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Write ``rows`` to ``run_dir/curve.csv`` and their plot to ``run_dir/figures/curve.png``, atomically."""
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    frame = frame.sort_values(["cell", "target", "model", "epoch"], key=_model_first, kind="stable")
    atomic_write(Path(run_dir) / CURVE_FILE, lambda tmp: frame.to_csv(tmp, index=False))
    if not frame.empty:
        plot_curve(frame, Path(run_dir) / CURVE_FIGURE)
    return frame


def _model_first(column: pd.Series) -> pd.Series:
    return column.map(MODELS.index) if column.name == "model" else column


def load_curve(run_dir: Path) -> pd.DataFrame | None:
    """The curve of a run, or None when it has none (``train.snapshots`` was not set)."""
    path = Path(run_dir) / CURVE_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return None if frame.empty else frame


def curve_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (attack, rate, epoch): ACC and patched ASR of each model, mean over seeds and targets."""
    table = frame.pivot_table(index=["attack", "rate", "epoch"], columns="model",
                              values=["clean_acc", "patched_asr"], aggfunc="mean")
    names = {"clean_acc": "ACC", "patched_asr": "patched ASR"}
    table.columns = [f"{names[metric]} ({model})" for metric, model in table.columns]
    order = [f"{names[m]} ({model})" for model in MODELS for m in names if f"{names[m]} ({model})" in table.columns]
    return table[order].round(2).reset_index()


def plot_curve(frame: pd.DataFrame, path: Path) -> Path:
    """ACC and patched ASR against the epoch, a colour per (cell, target), poisoned solid, clean dashed."""
    from matplotlib.figure import Figure  # matplotlib only when a curve is drawn
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, ((cell, target), block) in enumerate(frame.groupby(["cell", "target"], sort=False)):
        colour = f"C{i % 10}"
        for model, style in zip(MODELS, ("-", "--")):
            line = block[block["model"] == model].sort_values("epoch")
            if line.empty:
                continue
            for ax, metric in zip(axes, ("clean_acc", "patched_asr")):
                ax.plot(line["epoch"], line[metric], style, color=colour, marker="o", markersize=3,
                        label=f"{cell} t={target} {model}")
    for ax, label in zip(axes, ("clean-data ACC (%)", "patched-data ASR (%)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="x-small", loc="best")
    fig.suptitle("learning curve: poisoned (solid) vs clean (dashed) encoder", fontsize="medium")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path
