"""The detect stage: a filter defense's scores and removal mask on a poisoned training set."""

from __future__ import annotations

import json

import numpy as np

from benchsuite.api import Defense, DefenseContext, Detection, Poisoning
from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.core.checkpoint import save_json
from benchsuite.core.errors import BenchError
from benchsuite.eval.detection import CONTROL_SIZE, pasting_control
from benchsuite.stages.base import Encoder, StageBase, save_arrays


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


class DetectStage(StageBase):
    """Key: the defense (name, config, code version), the threat encoder, the poisoned set and the seed."""

    DETECT_VERSION = 0

    def detect_key(self, defense: Defense, threat_key: str, poison_key: str, seed: int) -> str:
        # CONTROL_SIZE: the stage also scores the pasting control (older cached detections lack it)
        return stable_hash("detect", defense.name, defense.config, threat_key, poison_key, seed, CONTROL_SIZE,
                           *code_versions(stage=self.DETECT_VERSION, defense=defense.version))

    def detect(self, defense: Defense, threat: Encoder, poisoning: Poisoning, poison_key: str,
               seed: int) -> Detection:
        """Run a filter defense (cached): per-image scores, the removal mask, located windows."""
        key = self.detect_key(defense, threat.key, poison_key, seed)
        workdir = self.cache.dir("detect", key)
        path = workdir / "detection.npz"

        def load() -> Detection:
            extras = json.loads((workdir / "extras.json").read_text()) if (workdir / "extras.json").is_file() else {}
            control_file = workdir / "control.json"
            control = json.loads(control_file.read_text())["control_flag_rate"] if control_file.is_file() else None
            with np.load(path) as d:
                # a detection cached before n_scored was stored: the filter's own count in its extras
                n_scored = int(d["n_scored"]) if "n_scored" in d.files else extras.get("scored")
                n_scored = None if n_scored is None or n_scored < 0 else int(n_scored)
                return Detection(d["scores"], d["remove"], d["windows"] if "windows" in d.files else None,
                                 {**extras, "workdir": str(workdir), "control_flag_rate": _nan_if_none(control)},
                                 n_scored=n_scored)

        def compute() -> Detection:
            images = poisoning.train.images
            mean, std = self.input_norm
            ctx = DefenseContext(images, threat.backbone, self.features(threat, images, "poisoned-train", poison_key),
                                 poisoning.train.num_classes, seed, self.device, workdir, mean, std)
            detection = defense.detect(ctx)
            remove = np.asarray(detection.remove, dtype=bool)
            if remove.shape != (len(images),):
                raise BenchError(f"defense {defense.name} returned a removal mask of shape {remove.shape}, "
                                 f"expected ({len(images)},): fix the plugin")
            scores = np.asarray(detection.scores, dtype=np.float64)
            windows = None if detection.windows is None else np.asarray(detection.windows, dtype=np.int64)
            n_scored = None if detection.n_scored is None else int(detection.n_scored)
            save_arrays(path, scores=scores, remove=remove, n_scored=np.int64(-1 if n_scored is None else n_scored),
                        **({} if windows is None else {"windows": windows}))
            save_json(workdir / "extras.json", detection.extras)
            # the pasting control, built here from the ground truth the defense never saw
            control = pasting_control(detection.flag, poisoning, seed)
            save_json(workdir / "control.json", {"control_flag_rate": None if np.isnan(control) else control})
            self.cache.mark_done("detect", key, {"defense": defense.name, "removed": int(remove.sum())})
            return Detection(scores, remove, windows, {**detection.extras, "workdir": str(workdir),
                                                       "control_flag_rate": control}, n_scored=n_scored)

        return self.cache.run("detect", key, load, compute)
