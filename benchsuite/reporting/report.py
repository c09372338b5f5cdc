"""``bench report``: one self-contained HTML page per run (the attacks first, then the run's provenance, the tables
and the figures, images inlined)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from benchsuite.core.checkpoint import atomic_write, save_figure
from benchsuite.core.errors import BenchError
from benchsuite.reporting.attack_pictures import load_captions
from benchsuite.reporting.curve import CURVE_FIGURE, curve_table, load_curve
from benchsuite.reporting.results import REFERENCE_DEFENSE, load_results
from benchsuite.reporting.tables import LAYOUTS, display_name

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; text-align: center; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; text-align: center; }
figure img { max-width: 520px; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
.meta td { text-align: left; }
.wide { overflow-x: auto; }
"""

# what a figure file is, from the suffix its writer gives it
CAPTIONS = {"patches": "retrieved candidate trigger patches (top-k)", "attention": "attention maps over top images",
            "retrieval": "IoU / catch rate of the top-k located windows (solid: all top-k, a non-poison as 0, as "
                         "PoisonCAM Figure 4; dashed: the top-k's poisons only)",
            "pr": "precision-recall of the ranking", "swk": "SWK: smoothed silhouette over K",
            "reversed_vs_true": "the real trigger at its mean position beside the encoder's reversed one "
                                "(m * delta on grey) and its mask > 0.5 (red box: the real trigger)",
            "trigger": "reversed trigger",
            "inversion": "DECREE: the inverted trigger (m * p on grey, the mask) and its optimisation per epoch: the "
                         "triggered batches' self-similarity, the mask's share of the image, lambda"}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _caption(name: str) -> str:
    for key, text in CAPTIONS.items():
        if key in name:
            return f"{html.escape(name)}: {text}"
    return html.escape(name)


def asr_summary(results: pd.DataFrame, path: Path) -> Path | None:
    """Bar chart of the patched-data ASR per defense and attack (mean over cells, std over seeds)."""
    if results.empty:
        return None
    order = [d for d in dict.fromkeys(results["defense"]) if d != REFERENCE_DEFENSE]
    order += [REFERENCE_DEFENSE] if REFERENCE_DEFENSE in set(results["defense"]) else []
    attacks = list(dict.fromkeys(results["attack"]))
    fig = Figure(figsize=(1.6 + 1.1 * len(order) * len(attacks), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(attacks)
    for i, attack in enumerate(attacks):
        block = results[results["attack"] == attack]
        per_seed = block.groupby(["defense", "seed"])["patched_asr"].mean().groupby("defense")
        means, stds = per_seed.mean().reindex(order), per_seed.std(ddof=1).reindex(order).fillna(0)
        ax.bar([j + i * width for j in range(len(order))], means.values, width, yerr=stds.values, label=attack,
               capsize=3)
    ax.set_xticks([j + width * (len(attacks) - 1) / 2 for j in range(len(order))],
                  [display_name(d) for d in order], rotation=15)
    ax.set_ylabel("patched-data ASR (%)")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


COST_BARS = [("cost_defense_s", "defense's own stages"), ("cost_pretrain_s", "pretraining of the evaluated encoder")]


def cost_summary(results: pd.DataFrame, path: Path) -> Path | None:
    """Bar chart of the wall time per defense: its own stages and the pretraining of the encoder it gives
    (mean over cells, std over seeds); None when the results hold no cost (a run from before costs were kept)."""
    bars = [(m, label) for m, label in COST_BARS if m in results and results[m].notna().any()]
    if not bars:
        return None
    order = [d for d in dict.fromkeys(results["defense"]) if d != REFERENCE_DEFENSE]
    order += [REFERENCE_DEFENSE] if REFERENCE_DEFENSE in set(results["defense"]) else []
    fig = Figure(figsize=(2.0 + 1.2 * len(order), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(bars)
    for i, (metric, label) in enumerate(bars):
        per_seed = results.groupby(["defense", "seed"])[metric].mean().groupby("defense")
        means, stds = per_seed.mean().reindex(order), per_seed.std(ddof=1).reindex(order).fillna(0)
        ax.bar([j + i * width for j in range(len(order))], means.fillna(0).values, width, yerr=stds.values,
               label=label, capsize=3)
    ax.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(order))],
                  [display_name(d) for d in order], rotation=15)
    ax.set_ylabel("wall time (s)")
    devices = sorted({part for v in results.get("cost_device", pd.Series(dtype=str)).dropna()
                      for part in str(v).split("+")})
    ax.set_title(f"device: {', '.join(devices) or 'unknown'}", fontsize="small")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def _tables(results: pd.DataFrame) -> str:
    parts = []
    for title, layout in LAYOUTS.values():
        frame = layout(results)
        if frame is None or frame.empty:
            continue
        table = frame.to_html(index=False, escape=True, border=0)
        parts.append(f'<h3>{html.escape(title)}</h3><div class="wide">{table}</div>')
    return "\n".join(parts)


def _cells(run_dir: Path) -> list[Path]:
    root = run_dir / "figures"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _attacks(run_dir: Path) -> str:
    """Each cell's attack pictures (triggers, poisoned and patched images) with their captions."""
    parts = []
    for cell in _cells(run_dir):
        if captions := load_captions(cell):
            figures = "".join(f"<figure>{_img(cell / name)}<figcaption>{html.escape(text)}</figcaption></figure>"
                              for name, text in captions.items())
            parts.append(f"<h3>{html.escape(cell.name)}</h3>{figures}")
    return "\n".join(parts) or "<p>No attack pictures (the run's cells predate them).</p>"


def _figures(run_dir: Path) -> str:
    parts = []
    for cell in _cells(run_dir):
        pngs = sorted(p for p in cell.glob("*.png") if not p.name.startswith("attack_"))  # shown under Attacks
        if not pngs:
            continue
        figures = "".join(f"<figure>{_img(p)}<figcaption>{_caption(p.stem)}</figcaption></figure>" for p in pngs)
        parts.append(f"<h3>{html.escape(cell.name)}</h3>{figures}")
    return "\n".join(parts) or "<p>No figures (no filter or model defense ran).</p>"


def _curve(run_dir: Path) -> str:
    """The learning curve (``train.snapshots``): its table and plot; empty when the run has none."""
    frame = load_curve(run_dir)
    if frame is None:
        return ""
    table = curve_table(frame).to_html(index=False, escape=True, border=0)
    figure = run_dir / CURVE_FIGURE
    caption = "ACC and patched ASR at each snapshot epoch: poisoned encoder solid, clean encoder dashed"
    plot = f"<figure>{_img(figure)}<figcaption>{caption}</figcaption></figure>" if figure.is_file() else ""
    return f'<h2>Learning curve</h2>\n<p>mean over seeds and targets</p><div class="wide">{table}</div>{plot}'


def _meta(run_dir: Path) -> str:
    rows = {"run": run_dir.name}
    for name in ("provenance.json", "config.json"):
        path = run_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:  # the tables still stand
                rows[name] = f"unreadable ({' '.join(str(err).split())})"
                continue
            if name == "config.json":
                config = data.get("config", {})
                ssl, train = config.get("ssl", {}), config.get("train", {})
                rows |= {"preset": config.get("preset"), "dataset": config.get("dataset", {}).get("name"),
                         "SSL": f"{ssl.get('method')} / {ssl.get('backbone')}", "epochs": train.get("epochs")}
            else:
                rows |= data
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f'<table class="meta">{body}</table>'


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``output``): each cell's attack pictures, the provenance, the ASR
    summary, every table layout with rows and each cell's defense pictures, all inlined so the page can be mailed
    or attached."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    output = Path(output) if output else run_dir / "report.html"
    if output.is_dir():
        raise BenchError(f"--output {output} is a folder: name the HTML file, e.g. {output / 'report.html'}")
    summary = asr_summary(results, run_dir / "asr_summary.png")
    costs = cost_summary(results, run_dir / "cost_summary.png")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>benchsuite report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head><body>
<h1>benchsuite report: {html.escape(run_dir.name)}</h1>
<h2>Attacks</h2>
{_attacks(run_dir)}
<h2>Run</h2>
{_meta(run_dir)}
<h2>Attack success at a glance</h2>
{f"<figure>{_img(summary)}<figcaption>mean over cells; error bars: sample std over seeds</figcaption></figure>"
 if summary else ""}
{f"<h2>Cost per defense</h2><figure>{_img(costs)}<figcaption>wall time of the defense's own stages (filter "
 "search + poison classifier, model-defense inspection + mitigation, training-time defense: its pretraining) "
 "and of pretraining the encoder each row evaluates; mean over cells, error bars: sample std over seeds; details in "
 "the Cost table</figcaption></figure>" if costs else ""}
<h2>Tables</h2>
{_tables(results)}
{_curve(run_dir)}
<h2>Figures per cell</h2>
{_figures(run_dir)}
</body></html>
"""
    atomic_write(output, lambda tmp: tmp.write_text(page))
    return output
