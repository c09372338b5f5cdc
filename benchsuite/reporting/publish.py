"""``bench publish``: a run's results as long-format rows in ``leaderboards/<dataset>__<attack>.csv``.

One row per cell x defense x target x metric set, with provenance. The schema is documented in
``leaderboards/README.md``. Rows are keyed by the recipe's config hash and the cell, so publishing
a run again (or a rerun of the same recipe) replaces its rows instead of adding copies; a file
lock serialises concurrent publishes, and each file is replaced atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from benchsuite.core.cache import stable_hash
from benchsuite.core.checkpoint import atomic_write
from benchsuite.core.cost import COST_COLUMNS
from benchsuite.core.errors import BenchError
from benchsuite.reporting.results import load_results

PROVENANCE = ["suite_version", "git_commit", "config_hash", "preset", "ssl", "backbone", "epochs", "hardware",
              "torch_version", "date"]
IDENTITY = ["dataset", "attack", "targets", "target", "rate", "seed", "defense", "metric_set"]
# the evaluator's view of a detector's verdict (benchsuite/eval/reversed_trigger.py), poisoned and clean encoder:
# SSL-Cleanse's clusters, DECREE's inversion, the reversed trigger against the real one
JUDGED = ["k", "min_norm", "median_norm", "unconverged", "flagged_label", "flagged_label_share", "flagged_is_target",
          "target_cluster_norm", "target_cluster_rank", "inversion_valid", "inversion_epochs", "inversion_self_sim",
          "inversion_self_sim_all", "shadow_self_sim", "trigger_iou", "trigger_iou_best", "trigger_colour_corr",
          "detect_s"]
METRIC_SETS = {
    "probe": ["clean_acc", "clean_fp", "clean_asr", "patched_acc", "patched_fp", "patched_asr", "patched_confusion",
              "n_train", "n_poison", "probe", "label_fraction"],
    "detection": ["removed", "recall", "control_flag_rate", "precision", "n_scored", "trigger_found", "best_flip_share",
                  "top5_acc", "top10_acc", "top20_acc",
                  "top50_acc", "top100_acc", "top500_acc", "top20_window_acc", "top50_window_acc", "top100_window_acc",
                  "iou", "catch_rate", "iou_all", "catch_rate_all",
                  "random_removal_recall", "random_removal_clean_acc", "random_removal_patched_asr"],
    "encoder_verdict": ["trojaned", "anomaly_index", "pl1", "flagged", "clean_trojaned", "clean_anomaly_index",
                        "clean_pl1", "detector_threshold", *JUDGED, *(f"clean_{m}" for m in JUDGED), "mitigate_s"],
    "cost": COST_COLUMNS,
    # model attacks in BadEncoder's terms: its ASR (target class included), the downstream task, the fine-tune
    "badencoder": ["downstream", "badencoder_asr", "control_badencoder_asr", "attack_effectiveness_cos",
                   "attack_reference_cos", "attack_utility_cos", "attack_triggered_self_cos", "attack_clean_self_cos",
                   "attack_warnings"],
}
COLUMNS = PROVENANCE + IDENTITY + [m for metrics in METRIC_SETS.values() for m in metrics]
KEY = ["config_hash", *IDENTITY]
FORMULA_START = ("=", "+", "-", "@")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf)$", re.IGNORECASE)


def escape_cell(value: Any) -> Any:
    """Prefix ``'`` to a text cell a spreadsheet would run as a formula (= + - @); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


def unescape_cell(value: str) -> str:
    if value.startswith("'") and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def recipe_hash(config: dict[str, Any]) -> str:
    """The hash of what makes the numbers of a cell: every setting but the grid's axes."""
    recipe = {k: v for k, v in config.items()
              if k not in ("grid", "cpu_threads") and not (k == "downstream" and v is None)}
    recipe["reference"] = config.get("grid", {}).get("reference")
    return stable_hash(recipe, length=12)


def leaderboard_rows(run_dir: Path) -> pd.DataFrame:
    """The long-format rows of one run."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())["config"]
        provenance = json.loads((run_dir / "provenance.json").read_text())
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise BenchError(f"{run_dir} lacks a readable config.json / provenance.json ({err}): "
                         "rerun `bench run` with this version to publish it") from err
    provenance = {**provenance, "config_hash": recipe_hash(config)}
    rows = []
    for record in results.to_dict("records"):
        for metric_set, metrics in METRIC_SETS.items():
            values = {m: record.get(m) for m in metrics}
            if metric_set != "probe" and all(pd.isna(v) for v in values.values()):
                continue
            if metric_set == "badencoder" and record.get("threat") != "model":  # data attacks: the probe set
                continue
            rows.append({**provenance, **{k: record.get(k) for k in PROVENANCE if k in record},
                         **{k: record.get(k) for k in IDENTITY if k != "metric_set"},
                         "metric_set": metric_set, **values})
    return pd.DataFrame(rows, columns=COLUMNS)


def _write(frame: pd.DataFrame, path: Path) -> None:
    escaped = frame.map(escape_cell)
    atomic_write(path, lambda tmp: escaped.to_csv(tmp, index=False))


def _read_leaderboard(path: Path) -> pd.DataFrame:
    """An existing leaderboard file, refused (not overwritten) when it is not one."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BenchError(f"{path} is not a readable leaderboard ({' '.join(str(err).split())}): restore it "
                         "(git checkout) or move it away, then publish again") from err
    missing = [c for c in KEY if c not in frame.columns]
    if missing:
        raise BenchError(f"{path} is not a readable leaderboard (lacks column(s) {', '.join(missing)}): restore it "
                         "(git checkout) or move it away, then publish again")
    return frame


def publish(run_dir: Path, leaderboards: Path) -> dict[Path, int]:
    """Merge a run into the leaderboard files; returns each file touched and its count of new rows."""
    rows = leaderboard_rows(run_dir)
    if rows.empty:
        raise BenchError(f"{run_dir} has no result rows yet: let `bench run` finish a cell first")
    leaderboards = Path(leaderboards)
    if leaderboards.exists() and not leaderboards.is_dir():
        raise BenchError(f"--leaderboards {leaderboards} is a file: pass the folder of the leaderboard CSVs")
    try:
        leaderboards.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create --leaderboards {leaderboards} ({err.strerror}): pass a writable folder") \
            from err
    added = {}
    for (dataset, attack), block in rows.groupby(["dataset", "attack"], sort=False):
        path = leaderboards / f"{dataset}__{attack}.csv"
        with FileLock(str(path) + ".lock", timeout=600):
            fresh = block.astype(str).replace({"nan": "", "None": ""})
            if path.is_file():
                old = _read_leaderboard(path).map(unescape_cell)
                old = old.reindex(columns=COLUMNS, fill_value="")
                merged = pd.concat([old, fresh], ignore_index=True)
            else:
                old, merged = None, fresh
            # the newest row of a (recipe, cell, defense, target, metric set) wins
            merged = merged.drop_duplicates(KEY, keep="last")
            before = 0 if old is None else len(old.drop_duplicates(KEY))
            _write(merged, path)
            added[path] = len(merged) - before
    return added
