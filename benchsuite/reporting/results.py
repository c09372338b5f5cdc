"""The results table of a run: one row per (attack, target, rate, seed, defense), as CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchsuite.core import distributed
from benchsuite.core.checkpoint import atomic_write
from benchsuite.core.cost import COST_COLUMNS
from benchsuite.core.errors import BenchError

RESULTS_FILE = "results.csv"

# Documented in the README ("Results columns").
COLUMNS = [
    "dataset", "downstream", "preset", "attack", "threat", "targets", "target", "rate", "seed", "defense",
    "clean_acc", "clean_asr", "clean_fp", "patched_acc", "patched_asr", "patched_fp", "badencoder_asr",
    "control_asr", "control_badencoder_asr", "patched_confusion",
    "n_train", "n_poison", "removed", "recall", "control_flag_rate", "precision", "n_scored", "trigger_found",
    "best_flip_share",
    "top5_acc", "top10_acc", "top20_acc", "top50_acc", "top100_acc", "top500_acc",
    "top20_window_acc", "top50_window_acc", "top100_window_acc", "iou", "catch_rate", "iou_all", "catch_rate_all",
    "trojaned", "anomaly_index", "pl1", "flagged", "clean_trojaned", "clean_anomaly_index", "clean_pl1",
    "detector_threshold", "detector_score", "figures",
    "ssl", "backbone", "epochs", "probe", "label_fraction", "encoder_key", *COST_COLUMNS,
]

# wall-clock columns: they differ between two computations of the same stage (compare results without them)
TIMING_COLUMNS = [*COST_COLUMNS, "detect_s", "clean_detect_s", "mitigate_s"]

# what every table reads; older files may lack the rest (they read as empty)
REQUIRED = ["dataset", "attack", "target", "rate", "seed", "defense", "clean_acc", "clean_asr", "patched_acc",
            "patched_asr"]

# what the tables average: a hand-edited or damaged cell there must not become NaN unnoticed
NUMERIC = ["rate", "seed", "clean_acc", "clean_asr", "patched_acc", "patched_asr", "badencoder_asr", "control_asr",
           "removed", "recall", "precision", "anomaly_index", "pl1"]

REFERENCE_DEFENSE = "clean-model"  # rows of the encoder trained on the clean dataset (not a defense)


def save_results(run_dir: Path, rows: list[dict]) -> pd.DataFrame:
    """Write all rows so far to ``run_dir/results.csv`` atomically and return them."""
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=COLUMNS + [c for c in frame.columns if c not in COLUMNS])
    if distributed.is_main():  # under torchrun rank 0 alone writes
        atomic_write(run_dir / RESULTS_FILE, lambda tmp: frame.to_csv(tmp, index=False))
    return frame


def _check_numeric(frame: pd.DataFrame, path: Path) -> None:
    """Refuse a metric column holding text (``ninety``) by column, row and value; empty cells stay NaN."""
    for column in (c for c in NUMERIC if c in frame.columns):
        values = frame[column]
        parsed = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & parsed.isna() & (values.astype(str).str.strip().str.lower() != "nan")
        if bad.any():
            row = int(bad.idxmax())
            raise BenchError(f"{path}: column {column} holds {values[row]!r} in row {row + 2} (a number or empty "
                             "expected): fix the cell or rerun `bench run`")


def load_results(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise BenchError(f"no {RESULTS_FILE} in {run_dir}: pass a run directory made by `bench run`")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BenchError(f"{path} is not a readable results file ({err}): rerun `bench run`") from err
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise BenchError(f"{path} lacks column(s) {', '.join(missing)}: it is not a results file of `bench run`; "
                         "pass a run directory or rerun `bench run`")
    if frame.empty:
        raise BenchError(f"{path} has no rows yet: let `bench run` finish a cell first")
    _check_numeric(frame, path)
    # a file written before a column was added reads as that column empty
    return frame.reindex(columns=COLUMNS + [c for c in frame.columns if c not in COLUMNS])
