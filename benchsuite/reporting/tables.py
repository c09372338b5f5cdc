"""Paper-form tables from a results frame; every layout is a frame of formatted strings.

- ``poisoncam-t1``: rows dataset / attack / rate / target (+ Average); per defense a column group
  Clean Val (ACC, ASR) | Patched Val (ACC, ASR).
- ``poisoncam-t2``: rows setting x metric (Total Rem., Recall, Precision); a column per filter defense.
- ``patchsearch-t1``: rows setting x filter defense; top-20 Acc, Rec., Prec., Total Rem.
- ``patchsearch-t2``: rows setting x model (Clean, Backdoored, defenses); Acc / FP / ASR on clean
  and patched data.
- ``detection``: per target and filter defense: removal, recall, the pasting control's flag rate, precision,
  top-20 accuracy (PatchSearch's and PoisonCAM's), IoU and CR (over the top-20's poisons and over all 20).
- ``sslcleanse``: per setting and encoder-level detector (SSL-Cleanse, DECREE) the encoders judged, TP, FP and
  DACC (SSL-Cleanse slides).
- ``sslcleanse-encoders``: one row per judged encoder (each cell's poisoned one, each seed's clean one) and
  detector: its score (SSL-Cleanse's anomaly index, DECREE's PL1), verdict, K and the smallest-norm cluster's
  majority class (SSL-Cleanse), the reversed trigger's IoU and colour agreement with the real one, detection
  and mitigation time.
- ``badencoder``: per downstream dataset, model attack and target: CA, BA, ASR, ASR-B (BadEncoder's Table;
  its ASR counts the target class) beside the suite's target-excluded ASR.
- ``cost``: per setting and defense, the wall / CPU time of the defense's own stages, ms per image and
  encoder forwards (filters), the pretraining time of the evaluated encoder, peak memory, device.

With several seeds every cell reads ``mean ± s (n=k)``: the sample std over the k seeds with a value (targets are
averaged first); ``n=2 of 3`` shows a seed without one. Undefined metrics (precision with nothing removed,
recall without poisons, top-k beyond the scored images) are NaN in the results and ``n/a`` here.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from rich.table import Table

from benchsuite.reporting.results import REFERENCE_DEFENSE

DISPLAY_NAMES = {"none": "w/o Defense", REFERENCE_DEFENSE: "Clean model (ref.)", "patchsearch": "PatchSearch",
                 "poisoncam": "PoisonCAM", "icutmix": "i-CutMix", "sslcleanse": "SSL-Cleanse", "decree": "DECREE",
                 "distill": "Distillation"}
TABLE1_METRICS = [("clean_acc", "Clean ACC"), ("clean_asr", "Clean ASR"),
                  ("patched_acc", "Patched ACC"), ("patched_asr", "Patched ASR")]
# PS / PC: PatchSearch's top-k accuracy (share of poisons, Table 1) / PoisonCAM's (window on the trigger, Figure 1);
# IoU / CR over the top-20's poisons, "all" over the whole top-20 with non-poisons as 0 (PoisonCAM Figures 4-5)
TABLE2_METRICS = [("removed", "Removed"), ("recall", "Recall"), ("control_flag_rate", "Control flag"),
                  ("precision", "Precision"), ("top20_acc", "Top-20 Acc (PS)"),
                  ("top20_window_acc", "Top-20 win. Acc (PC)"), ("iou", "IoU"), ("catch_rate", "CR"),
                  ("iou_all", "IoU all"), ("catch_rate_all", "CR all")]
# with ``--removal-control``: the filter's own retrained ASR beside that of as many images removed at random
REMOVAL_CONTROL_METRICS = [("patched_asr", "Patched ASR"), ("random_removal_recall", "Rand. rem. Recall"),
                           ("random_removal_patched_asr", "Rand. rem. Patched ASR"),
                           ("random_removal_clean_acc", "Rand. rem. Clean ACC")]


def display_name(defense: str) -> str:
    """The paper's name of a defense; a composed one reads e.g. "PatchSearch + i-CutMix"."""
    return " + ".join(DISPLAY_NAMES.get(part, part) for part in defense.split("+"))


# metrics that are NaN where they are undefined (precision with nothing removed, recall without poisons, a
# top-k beyond the scored images): an all-NaN cell of one reads "n/a", not "-" (nothing recorded)
UNDEFINED_WHEN_NAN = {"recall", "precision", "top5_acc", "top10_acc", "top20_acc", "top50_acc", "top100_acc",
                      "top500_acc", "top20_window_acc", "top50_window_acc", "top100_window_acc", "iou", "catch_rate",
                      "iou_all", "catch_rate_all", "random_removal_recall"}


def _fmt(values: pd.Series, digits: int = 1, empty: str = "-") -> str:
    """One value per seed as ``mean ± s (n=k)``: the sample std (ddof 1) over the k seeds with a value.

    A seed without a value (NaN: failed or undefined) is left out of the mean and shown in the count,
    ``(n=2 of 3)``; a single seed reads as its plain value; no value at all reads ``empty``.
    """
    finite = values.dropna()
    if finite.empty:
        return empty
    n, total = len(finite), len(values)
    count = f"n={n}" if n == total else f"n={n} of {total}"
    if n == 1:
        return f"{finite.iloc[0]:.{digits}f}" + ("" if total == 1 else f" ({count})")
    return f"{finite.mean():.{digits}f} ± {finite.std(ddof=1):.{digits}f} ({count})"


def _empty(metric: str) -> str:
    return "n/a" if metric in UNDEFINED_WHEN_NAN else "-"


def _defense_order(results: pd.DataFrame) -> list[str]:
    order = list(dict.fromkeys(results["defense"]))
    # the reference goes last, after the real defenses
    return [d for d in order if d != REFERENCE_DEFENSE] + [d for d in order if d == REFERENCE_DEFENSE]


def table1_frame(results: pd.DataFrame) -> pd.DataFrame:
    """PoisonCAM Table 1 as a frame of formatted strings; columns (defense, metric)."""
    return grouped_frame(results, _defense_order(results), TABLE1_METRICS)


def _filters(results: pd.DataFrame) -> list[str]:
    """The filter defenses (rows with a removal count; their recall may be undefined), in run order."""
    if "removed" not in results or results["removed"].isna().all():
        return []
    return [d for d in _defense_order(results) if results.loc[results["defense"] == d, "removed"].notna().any()]


def table2_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """Detection table over the filter defenses, per target; None when no filter defense ran."""
    filters = _filters(results)
    if not filters:
        return None
    controlled = "random_removal_patched_asr" in results and results["random_removal_patched_asr"].notna().any()
    return grouped_frame(results, filters, TABLE2_METRICS + (REMOVAL_CONTROL_METRICS if controlled else []))


SETTING = ["dataset", "attack", "rate"]


def _setting_cells(dataset: str, attack: str, rate: float) -> dict[tuple[str, str], str]:
    return {("", "Dataset"): dataset, ("", "Attack"): attack, ("", "Rate"): f"{100 * rate:g}%"}


def _over_seeds(rows: pd.DataFrame, metric: str, digits: int = 1) -> str:
    """:func:`_fmt` over seeds of the per-seed mean over targets (a removal count marked where a guard fired)."""
    if metric not in rows or rows.empty:
        return "-"
    cell = _fmt(rows.groupby("seed")[metric].mean(), digits, _empty(metric))
    return cell + _guard_mark(rows) if metric == "removed" else cell


def _guard_fired(rows: pd.DataFrame) -> pd.Series:
    """Rows where a filter's no-trigger guard fired (``trigger_found`` False): it removed nothing on purpose."""
    if "trigger_found" not in rows:
        return pd.Series(False, index=rows.index)
    return rows["trigger_found"].astype(str).str.lower().eq("false")


def _guard_mark(rows: pd.DataFrame) -> str:
    """" (guard: no trigger)" when the guard fired on every seed of ``rows``, "... in k of n" on some."""
    fired = _guard_fired(rows).groupby(rows["seed"]).any()
    if not fired.any():
        return ""
    return " (guard: no trigger)" if fired.all() else f" (guard: no trigger in {int(fired.sum())} of {len(fired)})"


def guard_notes(results: pd.DataFrame) -> list[str]:
    """One line per filter row whose no-trigger guard fired, with the best candidate's flip share."""
    rows = results[_guard_fired(results)]
    lines = []
    for _, row in rows.iterrows():
        share = row.get("best_flip_share")
        best = "" if share is None or pd.isna(share) else f"; the best candidate flipped {share:.1f}% of the flip set"
        lines.append(f"guard: {display_name(row['defense'])} on {row['attack']} target {row['target']} seed "
                     f"{row['seed']} found no trigger and removed nothing{best}")
    return list(dict.fromkeys(lines))


def poisoncam_t2_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """PoisonCAM Table 2: Total Rem. / Recall / Precision rows, a column per filter defense."""
    filters = _filters(results)
    if not filters:
        return None
    records = []
    for (dataset, attack, rate), block in results.groupby(SETTING, sort=False):
        for metric, title in [("removed", "Total Rem."), ("recall", "Recall ↑"), ("precision", "Precision ↑")]:
            record = {**_setting_cells(dataset, attack, rate), ("", "Metric"): title}
            for d in filters:
                record[("", display_name(d))] = _over_seeds(block[block["defense"] == d], metric)
            records.append(record)
    return _frame(records)


def patchsearch_t1_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """PatchSearch Table 1: per setting and filter defense, top-20 Acc, Rec., Prec., Total Rem."""
    filters = _filters(results)
    if not filters:
        return None
    metrics = [("top20_acc", "top-20 Acc (%)"), ("recall", "Rec. (%)"), ("precision", "Prec. (%)"),
               ("removed", "Total Rem.")]
    records = []
    for (dataset, attack, rate), block in results.groupby(SETTING, sort=False):
        for d in filters:
            rows = block[block["defense"] == d]
            records.append({**_setting_cells(dataset, attack, rate), ("", "Defense"): display_name(d),
                            **{("", title): _over_seeds(rows, m) for m, title in metrics}})
    return _frame(records)


PATCHSEARCH_T2_NAMES = {REFERENCE_DEFENSE: "Clean", "none": "Backdoored"}


def patchsearch_t2_frame(results: pd.DataFrame) -> pd.DataFrame:
    """PatchSearch Table 2: per setting and model, Acc / FP / ASR on clean and patched data."""
    metrics = [("Clean Data", "clean_acc", "Acc"), ("Clean Data", "clean_fp", "FP"), ("Clean Data", "clean_asr", "ASR"),
               ("Patched Data", "patched_acc", "Acc"), ("Patched Data", "patched_fp", "FP"),
               ("Patched Data", "patched_asr", "ASR")]
    order = _defense_order(results)
    order = [d for d in order if d == REFERENCE_DEFENSE] + [d for d in order if d != REFERENCE_DEFENSE]
    records = []
    for (dataset, attack, rate), block in results.groupby(SETTING, sort=False):
        for d in order:
            rows = block[block["defense"] == d]
            if rows.empty:
                continue
            name = PATCHSEARCH_T2_NAMES.get(d, display_name(d))
            records.append({**_setting_cells(dataset, attack, rate), ("", "Model"): name,
                            **{(group, title): _over_seeds(rows, m) for group, m, title in metrics}})
    return _frame(records)


def dacc_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """Detection accuracy of the encoder-level detectors: per setting and detector, encoders judged, TP, FP, DACC.

    Each cell's threat encoder counts once (not once per target); the clean encoder of a seed is
    shared by every cell of that seed, so it counts once per (dataset, seed).
    """
    if "trojaned" not in results or results["trojaned"].isna().all():
        return None
    judged = results[results["trojaned"].notna()]
    records = []
    for defense, rows in judged.groupby("defense", sort=False):
        for (dataset, attack), block in [*rows.groupby(["dataset", "attack"], sort=False), (("all", "all"), rows)]:
            trojan = block.drop_duplicates(["dataset", "attack", "targets", "rate", "seed"])
            clean = block.drop_duplicates(["dataset", "seed"])
            tp = int(trojan["trojaned"].astype(bool).sum())
            fp = int(clean["clean_trojaned"].astype(bool).sum())
            n = len(trojan) + len(clean)
            records.append({("", "Dataset"): dataset, ("", "Attack"): attack, ("", "Defense"): display_name(defense),
                            ("Trojaned", "encoders"): str(len(trojan)), ("Trojaned", "TP"): str(tp),
                            ("Clean", "encoders"): str(len(clean)), ("Clean", "FP"): str(fp),
                            ("", "DACC (%)"): f"{100 * (tp + len(clean) - fp) / n:.1f}"})
    return _frame(records)


def _cell(row: pd.Series, column: str, digits: int = 2) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _flag(value) -> str:
    return "-" if value is None or (isinstance(value, float) and pd.isna(value)) else ("yes" if bool(value) else "no")


def _target_cluster(row: pd.Series, prefix: str) -> str:
    rank = row.get(prefix + "target_cluster_rank")
    if rank is None or pd.isna(rank) or int(rank) == 0:
        return "-"
    return f"{_cell(row, prefix + 'target_cluster_norm', 3)} ({int(rank)})"


def _score_name(row: pd.Series) -> str:
    """The column of the row's detector score (``detector_score``; rows written before it: SSL-Cleanse's)."""
    name = row.get("detector_score")
    return "anomaly_index" if name is None or (isinstance(name, float) and pd.isna(name)) else str(name)


def _encoder_record(row: pd.Series, prefix: str, which: str) -> dict[tuple[str, str], str]:
    """One judged encoder's cells; ``prefix`` "" for the poisoned encoder, "clean_" for the clean one."""
    score = _score_name(row)
    label = row.get(prefix + "flagged_label")
    share = row.get(prefix + "flagged_label_share")
    trojaned = row.get("trojaned" if not prefix else "clean_trojaned")
    cls = "-" if label is None or pd.isna(label) else f"{int(label)} ({100 * share:.0f}%)"
    return {("", "Dataset"): str(row["dataset"]), ("", "Attack"): str(row["attack"]),
            ("", "Target"): str(row.get("targets", row["target"])), ("", "Seed"): str(row["seed"]),
            ("", "Encoder"): which, ("", "Defense"): display_name(str(row["defense"])),
            ("", "Score"): f"{score.replace('_', ' ')} {_cell(row, prefix + score, 3)}",
            ("", "K"): _cell(row, prefix + "k", 0),
            ("", "Verdict"): "-" if trojaned is None or pd.isna(trojaned) else
            ("trojaned" if bool(trojaned) else "benign"),
            ("Smallest cluster", "norm / median"): f"{_cell(row, prefix + 'min_norm', 3)} / "
                                                    f"{_cell(row, prefix + 'median_norm', 3)}",
            ("Smallest cluster", "class (share)"): cls,
            ("Smallest cluster", "attacked?"): _flag(row.get(prefix + "flagged_is_target")),
            ("Attacked class's cluster", "norm (rank)"): _target_cluster(row, prefix),
            ("Reversed trigger", "IoU"): _cell(row, prefix + "trigger_iou"),
            ("Reversed trigger", "IoU best"): _cell(row, prefix + "trigger_iou_best"),
            ("Reversed trigger", "colour r"): _cell(row, prefix + "trigger_colour_corr"),
            ("Time (s)", "detect"): _cell(row, prefix + "detect_s", 0),
            ("Time (s)", "mitigate"): _cell(row, "mitigate_s", 0) if not prefix else "-"}


def encoders_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """Per detector and encoder: each cell's poisoned encoder, then each seed's clean encoder once."""
    if "trojaned" not in results or results["trojaned"].isna().all():
        return None
    judged = results[results["trojaned"].notna()]
    records = []
    for _, row in judged.drop_duplicates(["dataset", "attack", "targets", "rate", "seed", "defense"]).iterrows():
        records.append(_encoder_record(row, "", "poisoned"))
    for _, row in judged.drop_duplicates(["dataset", "seed", "defense"]).iterrows():
        records.append({**_encoder_record(row, "clean_", "clean"), ("", "Attack"): "-", ("", "Target"): "-"})
    return _frame(records)


# (column, title, digits) of the ``cost`` layout; README "Results columns" says what each covers
COST_METRICS = [("cost_defense_s", "Defense (s)", 1), ("cost_cpu_s", "Defense CPU (s)", 1),
                ("cost_ms_per_image", "ms / image", 2), ("cost_forward_images", "Encoder forwards", 0),
                ("cost_pretrain_s", "Pretraining (s)", 1), ("cost_peak_rss_mb", "Peak RSS (MB)", 0),
                ("cost_peak_cuda_mb", "Peak CUDA (MB)", 0)]


def cost_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """Per setting and defense: what the defense's stages and the encoder's pretraining cost (mean ± std over
    seeds); None for results without cost columns (a run from before they were recorded)."""
    present = [m for m, _, _ in COST_METRICS if m in results and results[m].notna().any()]
    if not present:
        return None
    records = []
    for (dataset, attack, rate), block in results.groupby(SETTING, sort=False):
        for d in _defense_order(block):
            rows = block[block["defense"] == d]
            devices = sorted({part for v in rows.get("cost_device", pd.Series(dtype=str)).dropna()
                              for part in str(v).split("+")})
            records.append({**_setting_cells(dataset, attack, rate), ("", "Defense"): display_name(d),
                            **{("", title): _over_seeds(rows, m, digits) for m, title, digits in COST_METRICS},
                            ("", "Device"): ", ".join(devices) or "-"})
    return _frame(records)


def _frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def badencoder_frame(results: pd.DataFrame) -> pd.DataFrame | None:
    """BadEncoder's table for the model attacks: per downstream dataset, attack and target, CA / ASR-B (the clean
    encoder before the attack), BA / ASR (the backdoored one, each defense's too), ASR counting every triggered
    image including the target class's (BadEncoder's), beside the suite's ASR without them (PatchSearch's)."""
    if "threat" not in results or "badencoder_asr" not in results:
        return None
    model = results[results["threat"] == "model"]
    if model.empty:
        return None
    records = []
    by = "downstream" if "downstream" in model and model["downstream"].notna().all() else "dataset"
    for (dataset, attack), block in model.groupby([by, "attack"], sort=False):
        for target in dict.fromkeys(block["target"]):
            rows = block[block["target"] == target]
            clean = rows[rows["defense"] == REFERENCE_DEFENSE]
            for defense in [d for d in _defense_order(rows) if d != REFERENCE_DEFENSE]:
                attacked = rows[rows["defense"] == defense]
                record = {("", "Downstream"): dataset, ("", "Attack"): attack, ("", "Target"): str(target),
                          ("", "Defense"): display_name(defense)}
                if len(attacked) and _not_applicable(attacked).all():
                    record.update({("BadEncoder", k): "n/a" for k in ("CA", "BA", "ASR", "ASR-B")})
                    record[("Ours", "ASR w/o target")] = record[("Ours", "random-trigger ASR")] = "n/a"
                else:
                    record.update({("BadEncoder", "CA"): _over_seeds(clean, "clean_acc"),
                                   ("BadEncoder", "BA"): _over_seeds(attacked, "clean_acc"),
                                   ("BadEncoder", "ASR"): _over_seeds(attacked, "badencoder_asr"),
                                   ("BadEncoder", "ASR-B"): _over_seeds(clean, "badencoder_asr"),
                                   ("Ours", "ASR w/o target"): _over_seeds(attacked, "patched_asr"),
                                   # an unrelated pattern at the trigger's place: the share a patch alone gets
                                   ("Ours", "random-trigger ASR"): _over_seeds(attacked, "control_badencoder_asr")})
                records.append(record)
    return _frame(records) if records else None


Layout = Callable[[pd.DataFrame], "pd.DataFrame | None"]
LAYOUTS: dict[str, tuple[str, Layout]] = {
    "poisoncam-t1": ("PoisonCAM Table 1: ACC / ASR (%) on clean and patched validation data", table1_frame),
    "poisoncam-t2": ("PoisonCAM Table 2: poison detection (averaged over targets)", poisoncam_t2_frame),
    "patchsearch-t1": ("PatchSearch Table 1: poison detection", patchsearch_t1_frame),
    "patchsearch-t2": ("PatchSearch Table 2: Acc / FP / ASR on clean and patched data", patchsearch_t2_frame),
    "detection": ("Detection per target: removal, pasting control (% of clean images with a pasted foreign square "
                  "flagged), ranking (PS: PatchSearch's top-k Acc, PC: PoisonCAM's) and located windows", table2_frame),
    "sslcleanse": ("Encoder-level detectors (SSL-Cleanse, DECREE): detection accuracy", dacc_frame),
    "sslcleanse-encoders": ("Detectors per encoder: the score (SSL-Cleanse: anomaly index, trojaned above the "
                            "threshold; DECREE: PL1, trojaned below), the smallest-norm cluster's class (majority "
                            "of its sampled images; SSL-Cleanse) and the reversed trigger against the real one "
                            "(mask > 0.5; IoU at the trigger's mean position and at the best position)",
                            encoders_frame),
    "badencoder": ("BadEncoder's table (model attacks): CA / BA = clean accuracy of the clean / backdoored encoder, "
                   "ASR / ASR-B = triggered test images classified as the target, the target class included, on "
                   "the backdoored / clean encoder (%)", badencoder_frame),
    "cost": ("Cost: wall / CPU time of each defense's own stages, per image and encoder forwards (filters), "
             "pretraining of the evaluated encoder, peak memory", cost_frame),
}
# what `bench run` prints (each where the results have rows for it)
DEFAULT_LAYOUTS = ("poisoncam-t1", "badencoder", "detection", "sslcleanse", "sslcleanse-encoders")


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
                if len(d_rows) and _not_applicable(d_rows).all():  # the protocol declared the pair n/a
                    record.update({(display_name(defense), title): "n/a" for _, title in metrics})
                    continue
                # average over targets first, so the std is over seeds
                present = [m for m, _ in metrics if m in d_rows]
                by_seed = d_rows.groupby("seed")[present].mean()
                for metric, title in metrics:
                    cell = _fmt(by_seed[metric], empty=_empty(metric)) if metric in by_seed and len(by_seed) else "-"
                    record[(display_name(defense), title)] = cell + (_guard_mark(d_rows) if metric == "removed" else "")
            records.append(record)
    frame = pd.DataFrame(records)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def _not_applicable(rows: pd.DataFrame) -> pd.Series:
    if "not_applicable" not in rows:
        return pd.Series(False, index=rows.index)
    return rows["not_applicable"].notna() & (rows["not_applicable"].astype(str) != "")


def not_applicable_notes(results: pd.DataFrame) -> list[str]:
    """One line per (attack, defense) pair a protocol declared not applicable, with its reason."""
    if "not_applicable" not in results:
        return []
    rows = results[_not_applicable(results)]
    pairs = dict.fromkeys(zip(rows["attack"], rows["defense"], rows["not_applicable"]))
    return [f"n/a: {display_name(d)} on {a}: {reason}" for a, d, reason in pairs]


def table_width(frame: pd.DataFrame) -> int:
    """Characters a rich table of ``frame`` needs without wrapping a header or cell."""
    widths = [max([len(str(group)), len(str(metric)), *(len(str(v)) for v in frame[(group, metric)])])
              for group, metric in frame.columns]
    return sum(widths) + 3 * len(widths) + 1


def rich_table(frame: pd.DataFrame, title: str) -> Table:
    """Render a (group, metric)-column frame; group names head their first column. A rule separates the
    blocks of rows (dataset, attack, rate: every label column but the last), one block per attack."""
    table = Table(title=title, show_lines=False, header_style="bold")
    previous = None
    for group, metric in frame.columns:
        header = f"{group}\n{metric}" if group != previous and group else f"\n{metric}"
        previous = group
        table.add_column(header, justify="right" if group else "left")
    n_labels = sum(1 for group, _ in frame.columns if not group)
    block = None
    for _, row in frame.iterrows():
        cells = [str(v) for v in row.tolist()]
        if n_labels > 1 and block is not None and cells[: n_labels - 1] != block:
            table.add_section()
        block = cells[: n_labels - 1]
        style = "bold" if "Average" in cells else None
        table.add_row(*cells, style=style)
    return table


def latex_table(frame: pd.DataFrame, title: str) -> str:
    """A booktabs table (pandas' LaTeX writer) with the column groups as multicolumn headers."""
    if all(group == "" for group, _ in frame.columns):
        frame = frame.droplevel(0, axis=1)
    return frame.to_latex(index=False, multicolumn=True, multicolumn_format="c", caption=title, escape=True)


def markdown_table(frame: pd.DataFrame) -> str:
    headers = [f"{g} {m}".strip() for g, m in frame.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
