"""``bench leaderboard``: the published CSVs as one static HTML page and as one tidy CSV per metric set.

The page has a table per dataset x attack x metric set with only the columns that table fills, one row per
recipe x cell x defense x target with the mean ± sample std (n) over seeds, sortable and filterable by
inline JavaScript (no network). Rows of an older protocol version are shown apart, below each table.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchsuite import __version__
from benchsuite.core.checkpoint import atomic_write
from benchsuite.core.errors import BenchError
from benchsuite.reporting.publish import IDENTITY, METRIC_SETS, PROVENANCE, unescape_cell

TIDY_FOLDER = "by_metric_set"
# shown as their distinct values, not averaged: text, and class or cluster indices
TEXT_METRICS = {"probe", "cost_device", "attack_warnings", "downstream", "patched_confusion", "flagged",
                "flagged_label", "clean_flagged_label"}
BOOLEAN_METRICS = {"trojaned", "clean_trojaned", "flagged_is_target", "clean_flagged_is_target", "trigger_found",
                   "inversion_valid", "clean_inversion_valid"}
# what a row of the page stands for: the seeds of one recipe's cell, defense and target are averaged
ROW_KEY = ["config_hash", "preset", "ssl", "backbone", "epochs", "targets", "target", "rate", "defense"]
SHOWN_PROVENANCE = ["git_commit", "config_hash", "preset", "hardware", "date", "suite_version", "torch_version"]


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def read_leaderboards(folder: Path) -> pd.DataFrame:
    """Every ``<dataset>__<attack>.csv`` of ``folder`` as text cells, with ``source`` (the file) and
    ``missing_columns`` (the columns of the row's metric set its file lacks: written before they existed)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BenchError(f"leaderboard folder {folder} is a file: pass --leaderboards DIR, the folder of the "
                         "<dataset>__<attack>.csv files")
    if not folder.is_dir():
        raise BenchError(f"leaderboard folder {folder} not found: pass --leaderboards DIR, the folder "
                         "`bench publish` writes (default ./leaderboards)")
    paths = sorted(p for p in folder.glob("*__*.csv") if p.is_file())
    if not paths:
        raise BenchError(f"{folder} holds no <dataset>__<attack>.csv: publish a run first (`bench publish RUN`) "
                         "or pass --leaderboards DIR")
    frames = []
    for path in paths:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise BenchError(f"{path} is not a readable leaderboard ({' '.join(str(err).split())}): restore it "
                             "(git checkout) or move it away") from err
        lacking = [c for c in ("dataset", "attack", "metric_set", "seed", "defense") if c not in frame.columns]
        if lacking:
            raise BenchError(f"{path} lacks column(s) {', '.join(lacking)}: restore it (git checkout) or move it away")
        frame = frame.map(unescape_cell)
        frame["source"] = path.name
        frame["line"] = np.arange(2, len(frame) + 2)  # the file's line number, header = 1
        frame["missing_columns"] = [",".join(c for c in METRIC_SETS.get(m, []) if c not in frame.columns)
                                    for m in frame["metric_set"]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).fillna("")


def is_current(rows: pd.DataFrame, version: str = __version__) -> pd.Series:
    """True where a row is of the current protocol: this suite version or newer, and no column of its
    metric set missing from its file."""
    newer = rows["suite_version"].map(lambda v: _version(v) >= _version(version)) if "suite_version" in rows \
        else pd.Series(False, index=rows.index)
    return newer & (rows["missing_columns"] == "")


def numeric(rows: pd.DataFrame, column: str) -> pd.Series:
    """A metric column as floats (booleans as 1 / 0, empty as NaN); a cell that is not a number is refused
    with its file, line and value."""
    values = rows[column].astype(str).str.strip()
    if column in BOOLEAN_METRICS:
        values = values.replace({"True": "1", "False": "0", "true": "1", "false": "0"})
    parsed = pd.to_numeric(values.replace("", np.nan), errors="coerce")
    bad = parsed.isna() & (values != "") & ~values.str.lower().isin(["nan"])
    if bad.any():
        first = bad.idxmax()
        raise BenchError(f"{rows.at[first, 'source']} line {rows.at[first, 'line']}: {column} = "
                         f"{rows.at[first, column]!r} is not a number: correct or delete that row, then run "
                         "`bench leaderboard` again")
    return parsed.astype(float)


def mean_std(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample std (ddof 1; NaN for one value) and count of the values that are not NaN."""
    kept = values.dropna()
    n = len(kept)
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(kept.mean()), float(kept.std(ddof=1)) if n > 1 else float("nan"), n


def _format(mean: float, std: float, n: int, seeds: int) -> str:
    if n == 0:
        return ""
    count = f"n={n}" if n == seeds else f"n={n} of {seeds}"
    spread = f" ± {std:.1f}" if n > 1 else ""
    return f"{mean:.1f}{spread} ({count})" if abs(mean) < 1e5 else f"{mean:.4g}{spread} ({count})"


def _confusion(rows: pd.DataFrame) -> list[list[float] | None]:
    """``patched_confusion`` cells as lists of numbers (None where empty); a malformed cell is refused."""
    lists = []
    for index, cell in rows["patched_confusion"].items():
        if cell in ("", "nan"):
            lists.append(None)
            continue
        try:
            values = [float(x) for x in json.loads(cell)]
        except (json.JSONDecodeError, TypeError, ValueError):
            raise BenchError(f"{rows.at[index, 'source']} line {rows.at[index, 'line']}: patched_confusion = "
                             f"{cell!r} is not a JSON list of numbers: correct or delete that row, then run "
                             "`bench leaderboard` again") from None
        lists.append(values)
    return lists


def _text_value(group: pd.DataFrame, column: str) -> str:
    if column == "patched_confusion":
        lists = [v for v in _confusion(group) if v is not None]
        if lists and len({len(v) for v in lists}) == 1:  # the mean share per class, over the seeds
            return "[" + ", ".join(f"{x:.0f}" for x in np.mean(np.array(lists), axis=0)) + "]"
    return " / ".join(dict.fromkeys(v for v in group[column] if v not in ("", "nan")))


def summarise(rows: pd.DataFrame, metric_set: str) -> pd.DataFrame:
    """One row per recipe x cell x defense x target: each metric the set defines as ``mean ± s (n=k)`` over
    the seeds, with the numeric mean in ``<column>__value`` for sorting; all-empty metrics dropped."""
    metrics = [m for m in METRIC_SETS[metric_set] if m in rows.columns]
    parsed = {m: numeric(rows, m) for m in metrics if m not in TEXT_METRICS}
    if "patched_confusion" in rows:
        _confusion(rows)  # refuse a malformed cell before anything is written
    key = [c for c in ROW_KEY if c in rows.columns]
    out = []
    for _, group in rows.groupby(key, sort=False, dropna=False):
        record = {c: group[c].iloc[0] for c in key}
        seeds = group["seed"].nunique()
        record["seeds"] = ",".join(sorted(dict.fromkeys(group["seed"]), key=lambda s: (len(s), s)))
        for m in metrics:
            if m in parsed:
                mean, std, n = mean_std(parsed[m].loc[group.index])
                record[m], record[f"{m}__value"] = _format(mean, std, n, seeds), mean
            else:
                record[m] = _text_value(group, m)
        record["provenance"] = {c: " / ".join(dict.fromkeys(group[c])) for c in SHOWN_PROVENANCE if c in group}
        out.append(record)
    frame = pd.DataFrame(out)
    empty = [m for m in metrics if m in frame and (frame[m] == "").all()]
    return frame.drop(columns=empty + [f"{m}__value" for m in empty if f"{m}__value" in frame])


def tidy_tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One frame per ``<dataset>__<attack>__<metric_set>``: the per-seed rows with the provenance, the cell
    and only that metric set's columns, and ``protocol`` = current or older."""
    tables = {}
    current = is_current(rows)
    for (dataset, attack, metric_set), block in rows.groupby(["dataset", "attack", "metric_set"], sort=True):
        columns = [c for c in PROVENANCE + IDENTITY if c != "metric_set"]
        columns += [m for m in METRIC_SETS.get(metric_set, []) if m in block.columns]
        frame = block.reindex(columns=columns, fill_value="")
        frame.insert(0, "protocol", np.where(current.loc[block.index], "current", "older"))
        tables[f"{dataset}__{attack}__{metric_set}"] = frame
    return tables


def write_tidy(rows: pd.DataFrame, folder: Path) -> list[Path]:
    """Write :func:`tidy_tables` as ``folder/<dataset>__<attack>__<metric_set>.csv``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in tidy_tables(rows).items():
        path = folder / f"{name}.csv"
        atomic_write(path, lambda tmp, f=frame: f.to_csv(tmp, index=False, lineterminator="\n"))
        paths.append(path)
    return paths


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { font-size: 1em; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.4em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.text { text-align: left; } .wide { overflow-x: auto; } .older { opacity: 0.75; }
input.filter { margin: 0.3em 0; padding: 2px 6px; width: 20em; }
details.prov summary { cursor: pointer; color: #1a5fb4; } details.prov div { text-align: left; font-size: 0.9em; }
"""

SCRIPT = """
function cellValue(row, index) {
  const cell = row.cells[index];
  const v = cell.dataset.value;
  if (v !== undefined && v !== "" && !isNaN(Number(v))) return Number(v);
  return cell.textContent.trim().toLowerCase();
}
function sortTable(table, index, header) {
  const body = table.tBodies[0];
  const up = header.getAttribute("aria-sort") !== "ascending";
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", up ? "ascending" : "descending");
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, index), y = cellValue(b, index);
    if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
    return typeof x === "number" ? -1 : 1;  // numbers before empty cells, whichever direction
  });
  for (const row of rows) body.appendChild(row);
}
function filterTable(table, text) {
  const words = text.toLowerCase().split(/\\s+/).filter(Boolean);
  for (const row of table.tBodies[0].rows) {
    const content = row.textContent.toLowerCase();
    row.hidden = !words.every(w => content.includes(w));
  }
}
document.querySelectorAll("table.leaderboard").forEach(table => {
  Array.from(table.tHead.rows[0].cells).forEach((th, i) => th.addEventListener("click", () => sortTable(table, i, th)));
});
document.querySelectorAll("input.filter").forEach(input => {
  const table = document.getElementById(input.dataset.table);
  input.addEventListener("input", () => filterTable(table, input.value));
});
"""


def _provenance_cell(provenance: dict[str, str]) -> str:
    summary = html.escape(provenance.get("config_hash", "provenance"))
    lines = "".join(f"<div><b>{html.escape(k)}</b>: {html.escape(v)}</div>" for k, v in provenance.items())
    return f'<td class="text"><details class="prov"><summary>{summary}</summary>{lines}</details></td>'


def table_html(frame: pd.DataFrame, table_id: str, css_class: str = "") -> str:
    """One sortable table (``frame`` from :func:`summarise`) with its filter box."""
    # the provenance cell comes first and is summarised by the config hash, so the hash is no column of its own
    shown = [c for c in frame.columns if not c.endswith("__value") and c not in ("provenance", "config_hash")]
    head = "<th>provenance</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = []
    for _, row in frame.iterrows():
        cells = [_provenance_cell(row["provenance"])]
        for c in shown:
            value = row[f"{c}__value"] if f"{c}__value" in frame else None
            if value is not None and not pd.isna(value):
                cells.append(f'<td data-value="{value:.10g}">{html.escape(str(row[c]))}</td>')
            else:
                cells.append(f'<td class="text">{html.escape(str(row[c]))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<input class="filter" type="search" placeholder="filter rows (e.g. poisoncam)" '
            f'data-table="{table_id}" aria-label="filter {table_id}">'
            f'<div class="wide"><table class="leaderboard {css_class}" id="{table_id}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def page_html(rows: pd.DataFrame) -> str:
    """The whole leaderboard page: a section per dataset x attack, a table per metric set, older rows apart."""
    current = is_current(rows)
    parts, index = [], []
    for (dataset, attack), block in rows.groupby(["dataset", "attack"], sort=True):
        anchor = f"{dataset}__{attack}"
        index.append(f'<li><a href="#{html.escape(anchor)}">{html.escape(dataset)} x {html.escape(attack)}</a></li>')
        parts.append(f'<h2 id="{html.escape(anchor)}">{html.escape(dataset)} x {html.escape(attack)}</h2>')
        for metric_set in [m for m in METRIC_SETS if m in set(block["metric_set"])]:
            sub = block[block["metric_set"] == metric_set]
            now, old = sub[current.loc[sub.index]], sub[~current.loc[sub.index]]
            parts.append(f"<h3>{html.escape(metric_set)}</h3>")
            table_id = f"{anchor}__{metric_set}"
            parts.append(table_html(summarise(now, metric_set), table_id) if len(now)
                         else "<p>No row of the current protocol yet.</p>")
            if len(old):
                missing = sorted({c for cols in old["missing_columns"] for c in cols.split(",") if c})
                why = f" (their files lack {', '.join(missing)})" if missing else ""
                parts.append(f"<details class=\"older\"><summary>{len(old)} row(s) of an older protocol version"
                             f"{html.escape(why)}: not comparable with the table above</summary>"
                             f"{table_html(summarise(old, metric_set), table_id + '__older', 'older')}</details>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>benchsuite leaderboard</title>
<style>{STYLE}</style></head><body>
<h1>benchsuite leaderboard: backdoors on self-supervised encoders</h1>
<p>Generated by <code>bench leaderboard</code> from <code>leaderboards/*.csv</code>. One row per recipe
(<code>config_hash</code>), cell, defense and target; each metric is the mean ± sample standard deviation over the
seeds that have a value, with their count n. Click a column header to sort, type in a box to filter; the first
column opens each row's provenance. Compare rows of one <code>config_hash</code> only.</p>
<ul>{"".join(index)}</ul>
{"".join(parts)}
<script>{SCRIPT}</script>
</body></html>
"""


def write_leaderboard(leaderboards: Path, output: Path) -> Path:
    """Render ``leaderboards/*.csv`` into ``output/index.html`` (``output`` a folder); returns the page."""
    output = Path(output)
    if output.is_file():
        raise BenchError(f"--output {output} is a file: pass a folder (the page is written as index.html in it)")
    page = page_html(read_leaderboards(leaderboards))
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create --output {output} ({err.strerror}): pass a writable folder") from err
    path = output / "index.html"
    atomic_write(path, lambda tmp: tmp.write_text(page))
    return path
