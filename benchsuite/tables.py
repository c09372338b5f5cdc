"""Paper-form tables from a results frame.

Table 1 (PoisonCAM layout): rows dataset / poison rate (share of the target class) / target, an
average row; per defense a column group Clean Val (ACC, ASR) | Patched Val (ACC, ASR).
Table 2 (PoisonCAM Table 2 / PatchSearch Table 1): per filter defense total removed, recall,
precision, top-20 accuracy and the located windows' IoU / catch rate.
With several seeds every cell reads ``mean ± std`` over seeds.
"""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from benchsuite.results import REFERENCE_DEFENSE

DISPLAY_NAMES = {"none": "w/o Defense", REFERENCE_DEFENSE: "Clean model (ref.)", "patchsearch": "PatchSearch",
                 "poisoncam": "PoisonCAM", "icutmix": "i-CutMix", "sslcleanse": "SSL-Cleanse"}
TABLE1_METRICS = [("clean_acc", "Clean ACC"), ("clean_asr", "Clean ASR"),
                  ("patched_acc", "Patched ACC"), ("patched_asr", "Patched ASR")]
TABLE2_METRICS = [("removed", "Removed"), ("recall", "Recall"), ("precision", "Precision"),
                  ("top20_acc", "Top-20 Acc"), ("iou", "IoU"), ("catch_rate", "CR")]


def display_name(defense: str) -> str:
    return DISPLAY_NAMES.get(defense, defense)


def _fmt(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} ± {values.std(ddof=0):.1f}"


def _defense_order(results: pd.DataFrame) -> list[str]:
    order = list(dict.fromkeys(results["defense"]))
    # the reference goes last, after the real defenses
    return [d for d in order if d != REFERENCE_DEFENSE] + [d for d in order if d == REFERENCE_DEFENSE]


def table1_frame(results: pd.DataFrame) -> pd.DataFrame:
    """PoisonCAM Table 1 as a frame of formatted strings; columns (defense, metric)."""
    return grouped_frame(results, _defense_order(results), TABLE1_METRICS)


def table2_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """Detection table over the filter defenses (rows that have a recall); None when there are none."""
    if "recall" not in results or results["recall"].isna().all():
        return None
    filters = [d for d in _defense_order(results) if results.loc[results["defense"] == d, "recall"].notna().any()]
    return grouped_frame(results, filters, TABLE2_METRICS)


def grouped_frame(results: pd.DataFrame, defenses: list[str], metrics: list[tuple[str, str]]) -> pd.DataFrame:
    """Rows dataset / attack / rate / target (+ Average); a column group of ``metrics`` per defense."""
    records = []
    keys = ["dataset", "attack", "rate"]
    for (dataset, attack, rate), block in results.groupby(keys, sort=False):
        per_target = [(str(t), block[block["target"] == t]) for t in dict.fromkeys(block["target"])]
        if len(per_target) > 1:
            per_target.append(("Average", block))
        for target, rows in per_target:
            record = {("", "Dataset"): dataset, ("", "Attack"): attack, ("", "Rate"): f"{100 * rate:g}%",
                      ("", "Target"): target}
            for defense in defenses:
                d_rows = rows[rows["defense"] == defense]
                # average over targets first, so the std is over seeds
                present = [m for m, _ in metrics if m in d_rows]
                by_seed = d_rows.groupby("seed")[present].mean()
                for metric, title in metrics:
                    cell = _fmt(by_seed[metric]) if metric in by_seed and len(by_seed) else "-"
                    record[(display_name(defense), title)] = cell
            records.append(record)
    frame = pd.DataFrame(records)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def table_width(frame: pd.DataFrame) -> int:
    """Characters a rich table of ``frame`` needs without wrapping a header or cell."""
    widths = [max([len(str(group)), len(str(metric)), *(len(str(v)) for v in frame[(group, metric)])])
              for group, metric in frame.columns]
    return sum(widths) + 3 * len(widths) + 1


def rich_table(frame: pd.DataFrame, title: str) -> Table:
    """Render a (group, metric)-column frame; group names head their first column."""
    table = Table(title=title, show_lines=False, header_style="bold")
    previous = None
    for group, metric in frame.columns:
        header = f"{group}\n{metric}" if group != previous and group else f"\n{metric}"
        previous = group
        table.add_column(header, justify="right" if group else "left")
    for _, row in frame.iterrows():
        cells = [str(v) for v in row.tolist()]
        style = "bold" if "Average" in cells else None
        table.add_row(*cells, style=style)
    return table


def markdown_table(frame: pd.DataFrame) -> str:
    headers = [f"{g} {m}".strip() for g, m in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
