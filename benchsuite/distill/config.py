"""Every distillation option in one place (spec 10.2); the source's value in the comment.

The HTBA paper (Saha et al., CVPR 2022) distils with CompRess on 5, 10 or 25 % of the training set but
publishes no code of the defense; the recipe defaults follow CompRess's ``train_student.py`` (UMBCvision/
CompRess), scaled where a 32 px set of tens of thousands of images needs it (the value it replaces beside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Fraction, NonNegative, Positive, Sized, Unit

LOSSES = ("compress", "cosine")
STUDENTS = ("fresh", "suspect")


@dataclass(frozen=True)
class DistillConfig:
    # -- the defender's clean data ------------------------------------------------------------
    fraction: Fraction = 0.25  # share of the clean training split; HTBA paper: 5, 10 or 25 % (the largest here)
    # -- the student ----------------------------------------------------------------------------
    student: str = "fresh"  # "fresh": the suspect's architecture re-initialised (HTBA paper); "suspect": its copy
    # -- the loss -------------------------------------------------------------------------------
    loss: str = "compress"  # "compress": KL of similarity distributions over anchors (CompRess, HTBA's
    # choice); "cosine": 2 - 2 cos(student, teacher) per image, no anchors (cheaper)
    temperature: Positive = 0.04  # CompRess --compress_t 0.04, one temperature for teacher and student
    queue_size: Sized = 4096  # anchors in each memory bank; CompRess: 128,000 (ImageNet's 1.28M images)
    key_momentum: Unit = 0.999  # the student's anchors come from its EMA copy; CompRess --alpha 0.999
    cache_teacher: bool = False  # the teacher's features of the un-augmented images, computed once
    # (CompRess --cache_teacher); False: the teacher sees the student's augmented view
    # -- optimisation (CompRess: SGD, momentum 0.9) ----------------------------------------------
    epochs: Sized = 130  # CompRess: 130
    batch_size: Sized = 256  # CompRess: 256
    lr: Positive = 0.01  # CompRess: 0.01
    momentum: Unit = 0.9  # CompRess: 0.9
    weight_decay: NonNegative = 1e-4  # CompRess: 1e-4
    lr_drops: tuple[float, ...] = (90 / 130, 120 / 130)  # x0.2 at these shares of the epochs; CompRess: 90, 120
    lr_drop_factor: Positive = 0.2  # CompRess: 0.2
    # -- the views (CompRess: RandomResizedCrop + flip, nothing else) ----------------------------
    crop_scale: tuple[float, float] = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as CompRess

    def __post_init__(self) -> None:
        validate(self)  # refused when the config is read, before any stage runs


def validate(cfg: DistillConfig) -> None:
    """Refuse option values that cannot work, one line naming the fix."""
    lo, hi = cfg.crop_scale
    checks = [
        (0 < cfg.fraction <= 1, f"fraction={cfg.fraction}: set defense.distill.fraction in (0, 1] (a share of "
                                "the clean training split; HTBA paper: 0.05, 0.1 or 0.25)"),
        (cfg.student in STUDENTS, f"student={cfg.student!r}: use {' or '.join(STUDENTS)}"),
        (cfg.loss in LOSSES, f"loss={cfg.loss!r}: use {' or '.join(LOSSES)}"),
        (math.isfinite(cfg.temperature) and cfg.temperature > 0,
         f"temperature={cfg.temperature}: set defense.distill.temperature > 0 (CompRess: 0.04)"),
        (cfg.queue_size >= 1, f"queue_size={cfg.queue_size}: set defense.distill.queue_size >= 1"),
        (0 <= cfg.key_momentum < 1, f"key_momentum={cfg.key_momentum}: set it in [0, 1) (CompRess: 0.999)"),
        (cfg.epochs >= 1, f"epochs={cfg.epochs}: set defense.distill.epochs >= 1 (CompRess: 130)"),
        (cfg.batch_size >= 2, f"batch_size={cfg.batch_size}: set defense.distill.batch_size >= 2 (BatchNorm)"),
        (math.isfinite(cfg.lr) and cfg.lr > 0, f"lr={cfg.lr}: set defense.distill.lr > 0 (CompRess: 0.01)"),
        (0 <= cfg.momentum < 1 and cfg.weight_decay >= 0, "momentum must be in [0, 1) and weight_decay >= 0"),
        (all(0 < f <= 1 for f in cfg.lr_drops) and 0 < cfg.lr_drop_factor <= 1,
         "lr_drops must be shares of the epochs in (0, 1] and lr_drop_factor in (0, 1]"),
        (0 < lo <= hi <= 1, f"crop_scale={cfg.crop_scale}: set two shares 0 < min <= max <= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise BenchError(f"distill: {message}")
