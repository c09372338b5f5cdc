"""Encoder-level detectors: a verdict on the encoder under threat and on the clean encoder of the same seed.

A detector that also repairs (SSL-Cleanse) has its repaired encoder evaluated; one that only detects has
the encoder evaluated as it is. The rows carry both verdicts (``trojaned``, the detector's score under its
own name, ``clean_*``), the evaluator's judgement of the reversed trigger against the real one, and the
pictures of both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchsuite.api import Defense, Verdict
from benchsuite.core import distributed
from benchsuite.core.console import note
from benchsuite.eval.reversed_trigger import has_boxes, judgement_columns, save_trigger_comparison
from benchsuite.protocols.base import CellRun, DefenseProtocol, PlannedStage, Threat
from benchsuite.stages import Cell, Stages


class DetectorProtocol(DefenseProtocol):
    kind = name = "detector"
    description = "judge the encoder under threat and the clean encoder; evaluate the repaired one if it repairs"

    def plan(self, stages: Stages | None, cell: Cell, defense: Defense,
             threat_key: str | None) -> list[PlannedStage]:
        keyed = stages is not None
        planned = [PlannedStage("inspect", "inspect", stages.inspect_key(defense, threat_key, cell.seed)
                                if keyed else None, defense),
                   PlannedStage("inspect", "inspect clean", stages.inspect_key(
                       defense, stages.clean_encoder_key(cell.seed), cell.seed) if keyed else None, defense,
                       per_seed=True)]
        if defense.repairs():
            planned.append(PlannedStage("mitigate", "repair", stages.repair_key(defense, threat_key, cell.seed)
                                        if keyed else None, defense))
        return planned

    def run(self, run: CellRun, defense: Defense, threat: Threat) -> list[dict[str, Any]]:
        stages, cell = run.stages, run.cell
        verdict, workdir = stages.inspect(defense, threat.encoder, cell.seed)
        clean_verdict, _ = stages.inspect(defense, stages.clean_encoder(cell.seed), cell.seed)
        for which, v in (("poisoned", verdict), ("clean", clean_verdict)):
            for warning in v.extras.get("warnings", []):
                note(f"warning: {defense.name} on the {which} encoder of {cell.label}: {warning}")
        score = defense.score_name
        extra = {**threat.columns, "trojaned": verdict.trojaned, score: verdict.score, "flagged": verdict.flagged,
                 "clean_trojaned": clean_verdict.trojaned, f"clean_{score}": clean_verdict.score,
                 **judgement(run, defense, threat, verdict, clean_verdict),
                 "figures": ";".join(filter(None, [run.link_figures(workdir, defense.name),
                                                   *trigger_pictures(run, defense, threat, verdict, clean_verdict)]))}
        defense_stages = [("inspect", workdir.name)]
        encoder = threat.encoder
        if defense.repairs():
            encoder = stages.repair(defense, threat.encoder, verdict, cell.seed)
            repaired_key = stages.repair_key(defense, threat.encoder.key, cell.seed)
            defense_stages.append(("mitigate", repaired_key))
            timing = stages.cache.stage_cost("mitigate", repaired_key)
            repaired = encoder is not threat.encoder  # a benign verdict under mitigate_when = "trojaned"
            extra["mitigate_s"] = timing.wall_s if timing is not None and repaired else float("nan")
        if np.isfinite(verdict.threshold):
            extra["detector_threshold"] = verdict.threshold
        extra["detector_score"] = score  # which column holds the score (the per-encoder table reads it)
        return run.evaluated_rows(defense.name, encoder, extra, run.costs(defense_stages, []))


def judgement(run: CellRun, defense: Defense, threat: Threat, verdict: Verdict,
              clean_verdict: Verdict) -> dict[str, Any]:
    """The evaluator's view of both verdicts (README, "Results columns"): the smallest cluster's class, the
    reversed trigger against the real one, the detection time; ``clean_*`` for the clean encoder."""
    labels = run.stages.splits().train.labels
    out: dict[str, Any] = {}
    for prefix, v in (("", verdict), ("clean_", clean_verdict)):
        reversed_trigger = defense.reversed_trigger(v)
        found = None if reversed_trigger is None else (reversed_trigger.mask, reversed_trigger.pattern)
        columns = judgement_columns(v.extras, labels, threat.triggers, threat.boxes, threat.box_targets, found)
        columns["detect_s"] = v.extras.get("seconds", float("nan"))
        columns.update(v.extras.get("columns", {}))  # a detector's own per-encoder columns (DECREE's inversion)
        out.update({prefix + name: value for name, value in columns.items()})
    return out


def trigger_pictures(run: CellRun, defense: Defense, threat: Threat, verdict: Verdict,
                     clean_verdict: Verdict) -> list[str]:
    """The true trigger beside each encoder's reversed one, and the detector's own figures of its verdicts."""
    if not distributed.is_main():
        return []
    cell, saved = run.cell, []
    target = cell.targets[0]
    boxes = threat.boxes[threat.box_targets == target]
    score = defense.score_name.replace("_", " ")
    for which, v in (("poisoned", verdict), ("clean", clean_verdict)):
        title = f"{cell.label}, {which} encoder: {score} {v.score:.2f}"
        found = defense.reversed_trigger(v)
        # no box: a whole-image trigger (CTRL), nothing to put the reversed one beside
        if found is not None and target in threat.triggers and has_boxes(boxes):
            path = run.figures / f"{defense.name}_reversed_vs_true_{which}.png"
            save_trigger_comparison(path, found.mask, found.pattern, threat.triggers[target], boxes, title)
            saved.append(run.relative(path))
        for name, fig, _caption in defense.extra_figures(v, title):
            path = run.figures / f"{defense.name}_{which}_{name}"
            run.figures.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format="png", dpi=100)
            saved.append(run.relative(path))
    return saved
