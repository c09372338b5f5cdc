"""Filter defenses: score the poisoned training set, drop what they flag, retrain on what is kept.

A composed defense (``patchsearch+icutmix``) retrains the kept images with its training-time part. With
``grid.removal_control`` the same recipe is also retrained after removing as many random images, so
the filter's drop in ASR reads against what removing that many images gives anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchsuite.api import ComposedDefense, Defense, Poisoning
from benchsuite.core import distributed
from benchsuite.core.cache import stable_hash
from benchsuite.eval.detection import (
    guard_columns,
    per_target_detection,
    random_removal,
    removal_metrics,
    retrieval_curve,
    topk_accuracy,
    topk_window_accuracy,
    window_metrics,
)
from benchsuite.protocols.base import CellRun, DefenseProtocol, PlannedStage, Threat
from benchsuite.stages import Cell, Encoder, Stages


def kept_data_key(poison_key: str, remove: np.ndarray) -> str:
    """The data key of the training set left after a removal (a filter's, or its random control's)."""
    return stable_hash(poison_key, "kept", remove)


def split_parts(defense: Defense) -> tuple[Defense, Defense | None]:
    """(the filter, the training-time defense of the retrain or None) of a filter or composed defense."""
    if isinstance(defense, ComposedDefense):
        return defense.filter, defense.training
    return defense, None


class FilterProtocol(DefenseProtocol):
    kind = name = "filter"
    description = "detect poisons in the training set, remove them, retrain on the kept images"

    def applies(self, threat_kind: str) -> str | None:
        if threat_kind != "data":
            return "a filter removes poisoned training images; this threat poisons no training data"
        return None

    def plan(self, stages: Stages | None, cell: Cell, defense: Defense,
             threat_key: str | None) -> list[PlannedStage]:
        flt, training = split_parts(defense)
        control = self.config.grid.removal_control
        detect_key = retrain_key = control_key = None
        if stages is not None:
            poison_key = stages.poison_key(cell)
            detect_key = stages.detect_key(flt, threat_key, poison_key, cell.seed)
            if stages.cache.is_done("detect", detect_key):
                with np.load(stages.cache.dir("detect", detect_key) / "detection.npz") as d:
                    remove = d["remove"]
                retrain_key = stages.pretrain_key(kept_data_key(poison_key, remove), cell.seed, training)
                random = random_removal(len(remove), int(remove.sum()), cell.seed)
                control_key = stages.pretrain_key(kept_data_key(poison_key, random), cell.seed, training)
        planned = [PlannedStage("detect", "detect", detect_key, flt),
                   PlannedStage("pretrain", "retrain", retrain_key, training, images="kept")]
        if control:
            planned.append(PlannedStage("pretrain", "random removal", control_key, training, images="kept"))
        return planned

    def run(self, run: CellRun, defense: Defense, threat: Threat) -> list[dict[str, Any]]:
        stages, cell = run.stages, run.cell
        flt, training = split_parts(defense)
        poisoning, poison_key = threat.poisoning, threat.poison_key
        images, label = poisoning.train.images, f"{defense.name} {cell.label}"
        kept, kept_key, metrics, per_target = self._filter(run, flt, poisoning, poison_key, threat.encoder)
        extra = {**threat.columns, **metrics, "n_train": len(kept)}
        encoder = stages.encoder(images[kept], kept_key, cell.seed, label=f"retrain {label}", training=training)
        if run.config.grid.removal_control:
            control = self._removal_control(run, poisoning, poison_key, len(images) - len(kept), training, label)
            per_target = {t: {**per_target.get(t, {}), **control[t]} for t in control}
        costs = run.costs([("detect", stages.detect_key(flt, threat.encoder.key, poison_key, cell.seed))],
                          [("pretrain", encoder.key)], filtered_images=len(images))
        return run.evaluated_rows(defense.name, encoder, extra, costs, per_target=per_target)

    @staticmethod
    def _filter(run: CellRun, defense: Defense, poisoning: Poisoning, poison_key: str,
                threat: Encoder) -> tuple[np.ndarray, str, dict[str, Any], dict[int, dict[str, float]]]:
        """Run a filter defense: the kept indices, their data key, the detection metrics and per-target ones."""
        from benchsuite.reporting.pr_plot import save_pr_curve  # matplotlib: only when a filter runs
        from benchsuite.reporting.retrieval_plot import save_retrieval

        cell = run.cell
        detection = run.stages.detect(defense, threat, poisoning, poison_key, cell.seed)
        remove, n_scored = detection.remove, detection.n_scored
        curve = retrieval_curve(detection.scores, detection.windows, poisoning.boxes, n_scored=n_scored)
        plot = save_retrieval(run.figures, defense.name, curve, title=cell.label) \
            if distributed.is_main() else run.run_dir
        figures = run.link_figures(Path(detection.extras["workdir"]), defense.name)
        if distributed.is_main():
            pr = save_pr_curve(run.figures, defense.name, detection.scores, poisoning.poison_mask, title=cell.label)
            figures = ";".join(filter(None, [figures, run.relative(pr)]))
        metrics = {**removal_metrics(remove, poisoning.poison_mask),
                   "control_flag_rate": detection.extras.get("control_flag_rate", float("nan")),
                   "n_scored": len(remove) if n_scored is None else n_scored,
                   **guard_columns(detection.extras),
                   **topk_accuracy(detection.scores, poisoning.poison_mask, n_scored=n_scored),
                   **topk_window_accuracy(detection.scores, detection.windows, poisoning.boxes, n_scored=n_scored),
                   **window_metrics(detection.scores, detection.windows, poisoning.boxes, n_scored=n_scored),
                   "figures": ";".join(filter(None, [figures, run.relative(plot)]))}
        per_target = per_target_detection(remove, detection.scores, detection.windows, poisoning.boxes,
                                          poisoning.poison_target, n_scored)
        return np.flatnonzero(~remove), kept_data_key(poison_key, remove), metrics, per_target

    @staticmethod
    def _removal_control(run: CellRun, poisoning: Poisoning, poison_key: str, count: int,
                         training: Defense | None, label: str) -> dict[int, dict[str, float]]:
        """Per target, the ``random_removal_*`` columns: the recipe retrained after removing ``count`` random
        images."""
        stages, cell = run.stages, run.cell
        remove = random_removal(len(poisoning.train), count, cell.seed)
        encoder = stages.encoder(poisoning.train.images[~remove], kept_data_key(poison_key, remove), cell.seed,
                                 label=f"retrain random removal of {count}, {label}", training=training)
        return {m["target"]: {"random_removal_recall": removal_metrics(remove, poisoning.poison_target == m["target"])
                              ["recall"], "random_removal_clean_acc": m["clean_acc"],
                              "random_removal_patched_asr": m["patched_asr"]} for m in stages.evaluate(encoder, cell)}
