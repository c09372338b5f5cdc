"""Distillation on clean data (Saha et al., CVPR 2022, the HTBA paper's defense; spec 10.2): a repairer.

A fresh student of the suspect encoder's architecture learns the suspect's features from a small clean,
unlabelled share of the defender's training split (``fraction``), with CompRess's similarity-distribution
loss (``loss = "compress"``) or plain feature cosine (``"cosine"``). The trigger is never shown, so the
student should keep the clean features and lose the backdoor; the suite evaluates the student like any
encoder (clean ACC, ASR), beside the suspect encoder's own row. No verdict: every encoder is distilled.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from benchsuite.api import Defense, Verdict
from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.checkpoint import save_json
from benchsuite.core.errors import BenchError
from benchsuite.distill.config import DistillConfig
from benchsuite.distill.train import distil


def clean_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``round(fraction * n)`` (at least 2) of ``n`` images, drawn with the seed."""
    count = min(n, max(2, round(fraction * n)))
    return np.sort(np.random.default_rng([seed, 10]).permutation(n)[:count])


class Distillation(Defense):
    name = "distill"
    kind = "repairer"
    Config = DistillConfig
    description = "Distillation: a fresh student learns the encoder's features on a small clean set (CompRess loss)"

    def repair(self, ctx, verdict: Verdict | None) -> nn.Module | None:
        cfg = self.config
        if cfg.student == "suspect":
            student = copy.deepcopy(ctx.encoder)
        elif ctx.new_encoder is None:
            raise BenchError("distill: no recipe to build a fresh student from: set defense.distill.student="
                             "'suspect' to distil into a copy of the encoder")
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)  # the student's initialisation is the seed's
                student = ctx.new_encoder()
        rows = clean_subset(len(ctx.images), cfg.fraction, ctx.seed)
        features = ctx.features[rows] if cfg.cache_teacher else None
        student, log = distil(ctx.encoder, student, ctx.images[rows], cfg, ctx.seed, ctx.device, ctx.mean, ctx.std,
                              teacher_features=features)
        save_json(ctx.workdir / "distill.json", {"images": len(rows), "epochs": log})
        return student


@hookimpl
def benchsuite_defenses() -> list[type[Defense]]:
    return [Distillation]
