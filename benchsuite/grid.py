"""The grid: attacks x targets x rates x seeds, every defense on each cell, results saved as they come."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchsuite import __version__, distributed
from benchsuite.api import ComposedDefense, Defense, Poisoning, Verdict
from benchsuite.cache import keyed_fields, stable_hash
from benchsuite.checkpoint import copy_file, save_json, sweep_temp_files
from benchsuite.config import RunConfig
from benchsuite.console import note, set_log_file
from benchsuite.cost import row_costs
from benchsuite.errors import BenchError
from benchsuite.eval.detection import (
    per_target_detection,
    random_removal,
    removal_metrics,
    retrieval_curve,
    topk_accuracy,
    topk_window_accuracy,
    window_metrics,
)
from benchsuite.eval.reversed_trigger import has_boxes, judgement_columns, save_trigger_comparison
from benchsuite.executors import ExecutorSpec, execute
from benchsuite.pipeline import Cell, Encoder, Pipeline
from benchsuite.provenance import collect
from benchsuite.registry import Registry, get_registry
from benchsuite.results import REFERENCE_DEFENSE, save_results
from benchsuite.sslcleanse.codec import decode_trigger
from benchsuite.validate import check_config, check_poison_counts


def cells(config: RunConfig, expand: Callable[[str, tuple[int, ...]], tuple[int, ...]] | None = None) -> list[Cell]:
    """The grid's cells; ``expand(attack, targets)`` gives the targets a cell poisons (``Attack.cell_targets``)."""
    g = config.grid
    grid = itertools.product(g.attacks, g.targets, g.rates, g.seeds)
    # a widened cell may coincide with another one (multi-target from 0 and from 1 with explicit targets)
    return list(dict.fromkeys(Cell(a, expand(a, tuple(t)) if expand else tuple(t), r, s) for a, t, r, s in grid))


def cell_slug(cell: Cell) -> str:
    """A file-name form of a cell: ``htba_t0_r0.5_s1``."""
    return f"{cell.attack}_t{'+'.join(map(str, cell.targets))}_r{cell.rate:g}_s{cell.seed}"


def run_id(config: RunConfig) -> str:
    """Same configuration -> same run directory, so a rerun resumes into it."""
    data = config.to_dict()
    data["grid"] = keyed_fields(config.grid)  # a grid option added later moves the run only when it is set
    return f"{config.preset}-{config.dataset.name}-{stable_hash(data, length=8)}"


def kept_data_key(poison_key: str, remove: np.ndarray) -> str:
    """The data key of the training set left after a removal (a filter's, or its random control's)."""
    return stable_hash(poison_key, "kept", remove)


# bump when a cell's rows gain columns computed from cached stages: older cell results are then rebuilt
# (from their cached stages, so cheaply) instead of served without the new columns
ROWS_VERSION = 2


class GridRunner:
    def __init__(self, config: RunConfig, registry: Registry, out: Path) -> None:
        self.config = config
        self.registry = registry
        self.out = Path(out)
        self.run_dir = self.out / run_id(config)
        self.pipeline = Pipeline(config, registry, self.out / "cache")
        self._cell_stages: dict[Cell, list[list[str]]] = {}  # the (stage, key) pairs each cell ran through
        self._cell_curves: dict[Cell, list[dict[str, Any]]] = {}  # train.snapshots: the learning curve rows
        check_config(config, registry)  # every option of every section, before any stage runs
        # the threat encoder is trained for every cell anyway, so its "w/o Defense" column always comes first
        names = ["none", *[d for d in config.grid.defenses if d != "none"]]
        self.defenses = [self.pipeline.defense(name) for name in names]
        for cell in cells(config):  # fail fast on bad names and targets, before any training
            self.pipeline.attack(cell.attack)
        for d in self.defenses:
            if d.kind not in ("none", "filter", "training", "model", "composed"):
                raise BenchError(f"defense {d.name} is of unknown kind {d.kind!r}: a plugin's defense must be of "
                                 "kind none, filter, training or model")

    def _base_row(self, cell: Cell, defense: str, encoder_key: str) -> dict[str, Any]:
        c = self.config
        return {"dataset": c.dataset.label, "preset": c.preset, "attack": cell.attack,
                "targets": "+".join(map(str, cell.targets)), "rate": cell.rate, "seed": cell.seed,
                "defense": defense, "ssl": c.ssl.method, "backbone": c.ssl.backbone, "epochs": c.train.epochs,
                "probe": c.probe.kind, "label_fraction": c.probe.label_fraction, "encoder_key": encoder_key}

    def run(self, executor: ExecutorSpec | None = None) -> pd.DataFrame:
        """Run every cell not finished yet (reusing whatever the stage cache holds); return the results frame.

        A finished cell's rows live in ``<run>/cells/``; a rerun of the same command loads them.
        """
        executor = executor or ExecutorSpec()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():  # under torchrun rank 0 alone writes the run's files
            sweep_temp_files(self.out)  # what a killed run left half-written
            save_json(self.run_dir / "config.json", {"version": __version__, "config": self.config.to_dict()})
            save_json(self.run_dir / "provenance.json", collect(self.pipeline.device))
        splits = self.pipeline.splits()
        all_cells = self._cells()
        for cell in all_cells:
            for t in cell.targets:
                splits.check_target(t)
        check_poison_counts(splits, [(self.pipeline.attack(c.attack), c.targets, c.rate) for c in all_cells])
        set_log_file(self.run_dir / "run.log")
        note(f"run directory: {self.run_dir}")
        finished = {cell: rows for cell in all_cells if (rows := self.load_cell(cell)) is not None}
        pending = [cell for cell in all_cells if cell not in finished]
        if finished:
            note(f"{len(finished)} of {len(all_cells)} cells already finished")

        def ordered_rows() -> list[dict[str, Any]]:
            return [row for cell in all_cells if cell in finished for row in finished[cell]]

        for cell, rows in execute(run_cell_job, self.config, self.out, pending, executor, self.run_dir / "submitit"):
            finished[cell] = rows
            note(f"cell {len(finished)}/{len(all_cells)} done: {cell.label}")
            save_results(self.run_dir, ordered_rows())
            self._save_curve(all_cells, finished)
        self._save_curve(all_cells, finished)
        return save_results(self.run_dir, ordered_rows())

    def _save_curve(self, all_cells: list[Cell], finished: dict[Cell, Any]) -> None:
        """With ``train.snapshots``: ``<run>/curve.csv`` and ``figures/curve.png`` of the cells finished so far."""
        if self.config.train.snapshots and distributed.is_main():
            from benchsuite.eval.curve import save_curve  # matplotlib: only when there is a curve

            save_curve(self.run_dir, [row for cell in all_cells if cell in finished for row in self.load_curve(cell)])

    def load_curve(self, cell: Cell) -> list[dict[str, Any]]:
        """The learning-curve rows saved with a finished cell (none without ``train.snapshots``)."""
        try:
            return json.loads(self.cell_file(cell).read_text()).get("curve", [])
        except (OSError, ValueError, AttributeError):
            return []

    def cell_file(self, cell: Cell) -> Path:
        return self.run_dir / "cells" / f"{cell_slug(cell)}.json"

    def cell_inputs(self, cell: Cell) -> dict[str, str]:
        """The keys a cell's stages derive from: its poisoned set and threat encoder (data, trigger and
        start-checkpoint content included), so a cell result goes stale when any of them changes."""
        poison_key = self.pipeline.poison_key(cell)
        return {"poison": poison_key, "threat": self.pipeline.pretrain_key(poison_key, cell.seed),
                "rows": str(ROWS_VERSION)}

    def save_cell(self, cell: Cell, rows: list[dict[str, Any]]) -> None:
        """Write a cell's rows with the keys of its inputs and of the stages they came from."""
        if distributed.is_main():
            stages = self._cell_stages.get(cell, [])
            curve = {"curve": self._cell_curves[cell]} if cell in self._cell_curves else {}
            save_json(self.cell_file(cell), {"inputs": self.cell_inputs(cell), "stages": stages, "rows": rows,
                                             **curve})

    def load_cell(self, cell: Cell) -> list[dict[str, Any]] | None:
        """A finished cell's rows, or None when it must run (again): no result yet, or a stale one
        (its inputs changed, or a stage it came from is no longer cached)."""
        try:
            saved = json.loads(self.cell_file(cell).read_text())
        except (OSError, ValueError):  # missing, or unreadable: run the cell (its stages are cached)
            return None
        if not isinstance(saved, dict) or saved.get("inputs") != self.cell_inputs(cell):
            return None
        if not all(self.pipeline.cache.is_done(stage, key) for stage, key in saved.get("stages", [])):
            return None
        if any("patched_confusion" not in row for row in saved["rows"]):  # a cell run before the column
            return None
        return saved["rows"]

    def _cells(self) -> list[Cell]:
        """The cells with the targets each attack poisons (a multi-target attack widens a one-target cell)."""
        n = self.pipeline.splits().train.num_classes
        return cells(self.config, lambda attack, targets: self.pipeline.attack(attack).cell_targets(targets, n))

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        p = self.pipeline
        used = len(p.cache.used)
        poisoning, poison_key = p.poisoning(cell)
        n_poison = int(poisoning.poison_mask.sum())
        self._attack_pictures(cell, poisoning)
        threat = p.encoder(poisoning.train.images, poison_key, cell.seed, label=f"pretrain {cell.label}")
        rows = []
        for defense in self.defenses:
            rows += self._run_defense(defense, cell, poisoning, poison_key, threat, n_poison)
        models = [("poisoned", threat)]
        if self.config.grid.reference:
            clean = self.clean_encoder(cell)
            models.append(("clean", clean))
            for metrics in p.evaluate(clean, cell):
                rows.append({**self._base_row(cell, REFERENCE_DEFENSE, clean.key), **metrics,
                             **self._costs([], [("pretrain", clean.key)]),
                             "n_train": len(p.splits().train), "n_poison": 0})
        if self.config.train.snapshots:
            self._cell_curves[cell] = [row for model, encoder in models for row in self._curve(cell, model, encoder)]
        self._cell_stages[cell] = [["dataset", p.dataset_stage_key],
                                   *map(list, dict.fromkeys(p.cache.used[used:]))]
        return rows

    def _curve(self, cell: Cell, model: str, encoder: Encoder) -> list[dict[str, Any]]:
        """The probe metrics of ``encoder`` at each snapshot epoch (each probe cached like any other)."""
        rows = []
        for epoch, snapshot in self.pipeline.snapshots(encoder):
            base = {**self._base_row(cell, model, snapshot.key), "cell": cell_slug(cell), "model": model,
                    "epoch": epoch}
            rows += [{**base, **metrics} for metrics in self.pipeline.evaluate(snapshot, cell)]
        return rows

    def clean_encoder(self, cell: Cell) -> Encoder:
        """The same recipe trained on the clean training set (shared by every cell of a seed)."""
        p = self.pipeline
        return p.encoder(p.splits().train.images, p.clean_data_key, cell.seed,
                         label=f"pretrain clean s={cell.seed}")

    def _cell_folder(self, cell: Cell) -> Path:
        return self.run_dir / "figures" / cell_slug(cell)

    def _attack_pictures(self, cell: Cell, poisoning: Poisoning) -> None:
        """Save the cell's triggers, poisoned and patched images (issue #14) before any training."""
        from benchsuite.attack_pictures import save_attack_pictures  # matplotlib: only when a cell runs

        p = self.pipeline
        patched = {t: p.patched_val(cell.attack, t, cell.seed) for t in cell.targets}  # every rank: cached stage
        if distributed.is_main():
            save_attack_pictures(self._cell_folder(cell), p.attack(cell.attack), poisoning, p.splits(), patched,
                                 title=cell.label)

    def _link_figures(self, workdir: Path, cell: Cell, name: str) -> str:
        """Copy a defense's pictures (retrieved patches, attention maps) into ``<run>/figures/``."""
        folder = self._cell_folder(cell)
        copied = []
        for png in sorted(Path(workdir).glob("*.png")):
            if distributed.is_main():
                folder.mkdir(parents=True, exist_ok=True)
                copy_file(png, folder / f"{name}_{png.name}")
            copied.append(str((folder / f"{name}_{png.name}").relative_to(self.run_dir)))
        return ";".join(copied)

    def _filter(self, defense: Defense, cell: Cell, poisoning: Poisoning, poison_key: str,
                threat: Encoder) -> tuple[np.ndarray, str, dict[str, Any]]:
        """Run a filter defense: the kept indices, their data key and the detection metrics."""
        from benchsuite.eval.pr_plot import save_pr_curve  # matplotlib: only when a filter runs
        from benchsuite.eval.retrieval_plot import save_retrieval

        detection = self.pipeline.detect(defense, threat, poisoning, poison_key, cell.seed)
        remove = detection.remove
        curve = retrieval_curve(detection.scores, detection.windows, poisoning.boxes)
        plot = save_retrieval(self._cell_folder(cell), defense.name, curve, title=cell.label) \
            if distributed.is_main() else self.run_dir
        figures = self._link_figures(Path(detection.extras["workdir"]), cell, defense.name)
        if distributed.is_main():
            pr = save_pr_curve(self._cell_folder(cell), defense.name, detection.scores, poisoning.poison_mask,
                               title=cell.label)
            figures = ";".join(filter(None, [figures, str(pr.relative_to(self.run_dir))]))
        metrics = {**removal_metrics(remove, poisoning.poison_mask),
                   "control_flag_rate": detection.extras.get("control_flag_rate", float("nan")),
                   **topk_accuracy(detection.scores, poisoning.poison_mask),
                   **topk_window_accuracy(detection.scores, detection.windows, poisoning.boxes),
                   **window_metrics(detection.scores, detection.windows, poisoning.boxes),
                   "figures": ";".join(filter(None, [figures, str(plot.relative_to(self.run_dir))]))}
        per_target = per_target_detection(remove, detection.scores, detection.windows, poisoning.boxes,
                                          poisoning.poison_target)
        return np.flatnonzero(~remove), kept_data_key(poison_key, remove), metrics, per_target

    def _removal_control(self, cell: Cell, poisoning: Poisoning, poison_key: str, count: int,
                         training: Defense | None, label: str) -> dict[int, dict[str, float]]:
        """Per target, the ``random_removal_*`` columns: the same recipe retrained after removing ``count``
        random images, so a filter's drop in ASR reads against what removing that many images gives anyway."""
        p = self.pipeline
        remove = random_removal(len(poisoning.train), count, cell.seed)
        encoder = p.encoder(poisoning.train.images[~remove], kept_data_key(poison_key, remove), cell.seed,
                            label=f"retrain random removal of {count}, {label}", training=training)
        return {m["target"]: {"random_removal_recall": removal_metrics(remove, poisoning.poison_target == m["target"])
                              ["recall"], "random_removal_clean_acc": m["clean_acc"],
                              "random_removal_patched_asr": m["patched_asr"]} for m in p.evaluate(encoder, cell)}

    def _judgement(self, poisoning: Poisoning, verdict: Verdict, clean_verdict: Verdict) -> dict[str, Any]:
        """The evaluator's view of both verdicts (README, "Results columns"): the smallest cluster's class,
        the reversed trigger against the real one, the detection time; ``clean_*`` for the clean encoder."""
        labels = self.pipeline.splits().train.labels
        out: dict[str, Any] = {}
        for prefix, v in (("", verdict), ("clean_", clean_verdict)):
            columns = judgement_columns(v.extras, labels, poisoning.triggers, poisoning.boxes, poisoning.poison_target)
            columns["detect_s"] = v.extras.get("seconds", float("nan"))
            out.update({prefix + name: value for name, value in columns.items()})
        return out

    def _trigger_pictures(self, defense: Defense, cell: Cell, poisoning: Poisoning, verdict: Verdict,
                          clean_verdict: Verdict) -> list[str]:
        """The true trigger beside each encoder's reversed one, in the cell's figures."""
        if not distributed.is_main() or not poisoning.triggers:
            return []
        target = cell.targets[0]
        boxes = poisoning.boxes[poisoning.poison_target == target]
        if target not in poisoning.triggers or not has_boxes(boxes):  # no box: a whole-image trigger (CTRL)
            return []
        saved = []
        for which, v in (("poisoned", verdict), ("clean", clean_verdict)):
            if "trigger" not in v.extras:
                continue
            mask, pattern = decode_trigger(v.extras["trigger"])
            path = self._cell_folder(cell) / f"{defense.name}_reversed_vs_true_{which}.png"
            title = f"{cell.label}, {which} encoder: anomaly index {v.anomaly_index:.2f}"
            save_trigger_comparison(path, mask, pattern, poisoning.triggers[target], boxes, title)
            saved.append(str(path.relative_to(self.run_dir)))
        return saved

    def _costs(self, defense: list[tuple[str, str]], pretrain: list[tuple[str, str]],
                filtered_images: int | None = None) -> dict[str, Any]:
        """The ``cost_*`` columns from the recorded costs of the defense's own stages and of the pretraining of
        the row's encoder (README, "Results columns"); a cached stage keeps the cost it had when it ran."""
        cache = self.pipeline.cache
        return row_costs([cache.stage_cost(*s) for s in defense], [cache.stage_cost(*s) for s in pretrain],
                         filtered_images)

    def _run_defense(self, defense: Defense, cell: Cell, poisoning: Poisoning, poison_key: str, threat: Encoder,
                     n_poison: int) -> list[dict[str, Any]]:
        p = self.pipeline
        extra: dict[str, Any] = {"n_train": len(poisoning.train), "n_poison": n_poison}
        per_target: dict[int, dict[str, float]] = {}
        images, label = poisoning.train.images, f"{defense.name} {cell.label}"
        if defense.kind == "none":
            encoder = threat
            costs = self._costs([], [("pretrain", threat.key)])
        elif defense.kind == "training":
            encoder = p.encoder(images, poison_key, cell.seed, label=f"pretrain {label}", training=defense)
            costs = self._costs([("pretrain", encoder.key)], [("pretrain", encoder.key)])
        elif defense.kind in ("filter", "composed"):
            filter_defense = defense.filter if isinstance(defense, ComposedDefense) else defense
            training = defense.training if isinstance(defense, ComposedDefense) else None
            kept, kept_key, metrics, per_target = self._filter(filter_defense, cell, poisoning, poison_key, threat)
            extra.update(metrics, n_train=len(kept))
            encoder = p.encoder(images[kept], kept_key, cell.seed, label=f"retrain {label}", training=training)
            if self.config.grid.removal_control:
                control = self._removal_control(cell, poisoning, poison_key, len(images) - len(kept), training, label)
                per_target = {t: {**per_target.get(t, {}), **control[t]} for t in control}
            costs = self._costs([("detect", p.detect_key(filter_defense, threat.key, poison_key, cell.seed))],
                                [("pretrain", encoder.key)], filtered_images=len(images))
        else:  # model: judge the threat and the clean encoder, evaluate the repaired threat encoder
            verdict, workdir = p.inspect(defense, threat, cell.seed)
            clean_verdict, _ = p.inspect(defense, self.clean_encoder(cell), cell.seed)
            for which, v in (("poisoned", verdict), ("clean", clean_verdict)):
                for warning in v.extras.get("warnings", []):
                    note(f"warning: {defense.name} on the {which} encoder of {cell.label}: {warning}")
            extra.update(trojaned=verdict.trojaned, anomaly_index=verdict.anomaly_index, flagged=verdict.flagged,
                         clean_trojaned=clean_verdict.trojaned, clean_anomaly_index=clean_verdict.anomaly_index,
                         **self._judgement(poisoning, verdict, clean_verdict),
                         figures=";".join(filter(None, [self._link_figures(workdir, cell, defense.name),
                                                        *self._trigger_pictures(defense, cell, poisoning,
                                                                                verdict, clean_verdict)])))
            encoder = p.mitigate(defense, threat, verdict, cell.seed)
            mitigated = p.mitigate_key(defense, threat.key, cell.seed)
            costs = self._costs([("inspect", workdir.name), ("mitigate", mitigated)], [])
            timing = p.cache.stage_cost("mitigate", mitigated)
            repaired = encoder is not threat  # a benign verdict under mitigate_when = "trojaned" repairs nothing
            extra["mitigate_s"] = timing.wall_s if timing is not None and repaired else float("nan")
        return [{**self._base_row(cell, defense.name, encoder.key), **metrics, **extra, **costs,
                 **per_target.get(metrics["target"], {})} for metrics in p.evaluate(encoder, cell)]


def run_cell_job(config: RunConfig, out: str, cell: Cell, gpus: Any = None) -> list[dict[str, Any]]:
    """One cell, start to finish, in whatever process an executor runs it; returns (and saves) its rows.

    ``gpus``: a queue of free GPU indices shared by worker processes; this job takes one while it runs."""
    gpu = gpus.get() if gpus is not None else None
    try:
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before this fresh process touches CUDA
        runner = GridRunner(config, get_registry(), Path(out))
        rows = runner.run_cell(cell)
        runner.save_cell(cell, rows)
        return rows
    finally:
        if gpu is not None:
            gpus.put(gpu)
