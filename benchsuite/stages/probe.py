"""The probe stage: a linear / kNN probe on the clean labelled split, scored on clean and patched val."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.core.checkpoint import save_json
from benchsuite.eval.lincls import fit_lincls
from benchsuite.eval.metrics import (
    accuracy,
    attack_success_rate,
    confusion_matrix,
    false_positives,
    prediction_shares,
    target_share,
)
from benchsuite.eval.probe import IMAGE_PROBES, fit_probe, labelled_split
from benchsuite.eval.trigger_control import control_images
from benchsuite.ssl.augment import AugmentConfig
from benchsuite.stages.base import Cell, Encoder, StageBase

# predict(name of the image set, its images) -> classes: feature probes look the cached features up by name
Predict = Callable[[Any, np.ndarray], np.ndarray]


class ProbeStage(StageBase):
    """Key: the encoder, the probe config, and the keys of the patched sets it is scored on (so an attack's
    config, trigger files or code version reach the probe through them, as they reach the patched set)."""

    PROBE_VERSION = 2  # 1: the rows gained badencoder_asr; 2: the random-trigger control (control_*)

    def probe_key(self, encoder_key: str, cell: Cell) -> str:
        patched = [self.patched_key(cell.attack, t, cell.seed) for t in cell.targets]
        per_cell = [cell.seed] if self.config.probe.vary_with_seed else []  # the splits depend on it then
        return stable_hash("probe", encoder_key, self.downstream_key, self.config.probe, patched, *per_cell,
                           *code_versions(stage=self.PROBE_VERSION))

    def split_seeds(self, cell_seed: int) -> list[int]:
        """The seeds of the probe's labelled splits: ``probe.seeds``, mixed with the cell's seed when
        ``probe.vary_with_seed`` is set."""
        seeds = list(self.config.probe.seeds)
        if not self.config.probe.vary_with_seed:
            return seeds
        return [int(np.random.SeedSequence([s, cell_seed, 0x9B0]).generate_state(1)[0]) for s in seeds]

    def evaluate(self, encoder: Encoder, cell: Cell) -> list[dict[str, Any]]:
        """Linear/kNN probe on the clean labelled split; ACC/FP/ASR on clean and patched val per target."""
        key = self.probe_key(encoder.key, cell)
        path = self.cache.dir("probe", key) / "metrics.json"

        def compute() -> list[dict[str, Any]]:
            splits = self.downstream_splits()
            n_cls = splits.train.num_classes
            patched = {t: self.patched_val(cell.attack, t, cell.seed) for t in cell.targets}
            controls = self._controls(splits.val, patched, cell.seed)
            fit = self._image_probe(encoder) if self.config.probe.kind in IMAGE_PROBES else \
                self._feature_probe(encoder, cell, patched, controls)
            per_seed = []
            for probe_seed in self.split_seeds(cell.seed):
                predict = fit(probe_seed)
                clean_pred = predict("val", splits.val.images)
                per_seed.append({t: (confusion_matrix(splits.val.labels, clean_pred, n_cls),
                                     confusion_matrix(patched[t].labels, predict(t, patched[t].images), n_cls),
                                     None if t not in controls else
                                     confusion_matrix(splits.val.labels, predict(("control", t), controls[t]), n_cls))
                                 for t in cell.targets})
            rows = []
            for t in cell.targets:
                nan = float("nan")
                stats = np.array([[accuracy(c), attack_success_rate(c, t), false_positives(c, t),
                                   accuracy(p), attack_success_rate(p, t), false_positives(p, t),
                                   target_share(p, t), nan if r is None else attack_success_rate(r, t),
                                   nan if r is None else target_share(r, t)]
                                  for c, p, r in (s[t] for s in per_seed)])
                mean = stats.mean(0)
                # where trigger t sends the non-target images, % per predicted class (issue #14)
                shares = np.mean([prediction_shares(s[t][1], t) for s in per_seed], axis=0)
                rows.append(dict(target=t, clean_acc=mean[0], clean_asr=mean[1], clean_fp=mean[2],
                                 patched_acc=mean[3], patched_asr=mean[4], patched_fp=mean[5], badencoder_asr=mean[6],
                                 control_asr=mean[7], control_badencoder_asr=mean[8],
                                 patched_confusion=[round(float(v), 2) for v in shares]))
            save_json(path, rows)
            self.cache.mark_done("probe", key, {"encoder": encoder.key})
            return rows

        def load() -> list[dict[str, Any]]:
            rows = json.loads(path.read_text())
            if any("patched_confusion" not in row for row in rows):  # probed before the column: probe again
                raise FileNotFoundError(f"{path} lacks patched_confusion")
            return rows

        return self.cache.run("probe", key, load, compute)

    def _controls(self, val: Any, patched: dict[int, Any], seed: int) -> dict[int, np.ndarray]:
        """Per target, the validation images with a seeded random pattern at the patched set's boxes (the
        random-trigger control); only where the attack patched every validation image in order and at a box."""
        controls = {}
        for t, p in patched.items():
            if len(p.labels) == len(val.labels) and np.array_equal(p.labels, val.labels):
                images = control_images(val.images, np.asarray(p.boxes), [seed, t, 0xC7])
                if images is not None:
                    controls[t] = images
        return controls

    def _feature_probe(self, encoder: Encoder, cell: Cell, patched: dict[int, Any],
                       controls: dict[int, np.ndarray]) -> Callable[[int], Predict]:
        """Probes on cached features: ``fit(probe_seed)`` gives ``predict(name, images)`` that looks the
        features of the named image set up ("val", a target's patched set, or ("control", target))."""
        splits = self.downstream_splits()
        train_f = self.features(encoder, splits.train.images, "train", self.downstream_key)
        named = {"val": self.features(encoder, splits.val.images, "val", self.downstream_key),
                 **{t: self.features(encoder, p.images, "patched", self.patched_key(cell.attack, t, cell.seed))
                    for t, p in patched.items()},
                 **{("control", t): self.features(encoder, images, "control",
                                                  stable_hash("control", self.patched_key(cell.attack, t, cell.seed)))
                    for t, images in controls.items()}}

        def fit(probe_seed: int) -> Predict:
            predict = fit_probe(train_f, splits.train.labels, splits.train.num_classes, self.config.probe, probe_seed)
            return lambda name, images: predict(named[name])

        return fit

    def _image_probe(self, encoder: Encoder) -> Callable[[int], Predict]:
        """PatchSearch's linear evaluation on augmented images through the frozen backbone."""
        splits, cfg = self.downstream_splits(), self.config.probe
        mean, std = self.input_norm
        norm = AugmentConfig(mean=mean, std=std)

        def fit(probe_seed: int) -> Predict:
            idx = labelled_split(splits.train.labels, cfg.label_fraction, probe_seed)
            predict = fit_lincls(encoder.backbone, splits.train.images[idx], splits.train.labels[idx],
                                 splits.train.num_classes, cfg, probe_seed, self.device, norm)
            return lambda name, images: predict(images)

        return fit
