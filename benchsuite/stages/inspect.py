"""The inspect stage: an encoder-level detector's verdict on one encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchsuite.api import Defense, DefenseContext, Verdict
from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.core.checkpoint import save_json
from benchsuite.stages.base import Encoder, StageBase


def verdict_from_json(data: dict[str, Any]) -> Verdict:
    """A stored verdict; one stored before verdicts had a score and threshold holds SSL-Cleanse's index."""
    score = data["score"] if "score" in data else data["anomaly_index"]
    threshold = data.get("threshold")
    return Verdict(bool(data["trojaned"]), float(score), float("nan") if threshold is None else float(threshold),
                   data.get("flagged"), data.get("extras", {}))


class InspectStage(StageBase):
    """Key: the detector (name, what of its config the detection reads, code version), the encoder, the
    defender's data and the seed."""

    INSPECT_VERSION = 0

    def defender_context(self, encoder: Encoder, seed: int, workdir: Path) -> DefenseContext:
        """An encoder-level defense sees the encoder and the defender's own data: the clean training images."""
        splits = self.splits()
        feats = self.features(encoder, splits.train.images, "train", self.dataset_key)
        mean, std = self.input_norm
        return DefenseContext(splits.train.images, encoder.backbone, feats, splits.train.num_classes, seed,
                              self.device, workdir, mean, std, splits.train.labels,
                              new_encoder=lambda: self.build_method().backbone)

    def inspect_key(self, defense: Defense, encoder_key: str, seed: int) -> str:
        return stable_hash("inspect", defense.name, defense.inspect_options(), encoder_key, self.dataset_key, seed,
                           *code_versions(stage=self.INSPECT_VERSION, defense=defense.version))

    def inspect(self, defense: Defense, encoder: Encoder, seed: int) -> tuple[Verdict, Path]:
        """Run a detector on one encoder (cached); returns the verdict and its folder."""
        key = self.inspect_key(defense, encoder.key, seed)
        workdir = self.cache.dir("inspect", key)
        path = workdir / "verdict.json"

        def compute() -> Verdict:
            verdict = defense.inspect(self.defender_context(encoder, seed, workdir))
            save_json(path, {"trojaned": bool(verdict.trojaned), "score": float(verdict.score),
                             "threshold": float(verdict.threshold),
                             "flagged": None if verdict.flagged is None else int(verdict.flagged),
                             "extras": verdict.extras})
            self.cache.mark_done("inspect", key, {"defense": defense.name, "encoder": encoder.key})
            return verdict

        def load() -> Verdict:
            return verdict_from_json(json.loads(path.read_text()))

        return self.cache.run("inspect", key, load, compute), workdir
