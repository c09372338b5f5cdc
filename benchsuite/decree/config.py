"""Every DECREE option in one place (spec 10.1); the official code's value in the comment.

"code" is GiantSeaweed/DECREE 9c13b88: ``main.py`` (the optimisation) and ``run_decree.py`` (the command it
runs). The code switches some values by encoder: the defaults here are its CIFAR-10 / STL-10 (32 px) ones,
and the comments give its ImageNet / CLIP (224 px) ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Positive, Sized, Unit


@dataclass(frozen=True)
class DecreeConfig:
    # -- shadow data ------------------------------------------------------------------------
    shadow_images: Sized = 1000  # code: the first 10 % of each CIFAR-10 test class = 1,000 (ImageNet: 20 % of a list)
    # -- optimisation -------------------------------------------------------------------------
    batch_size: Sized = 128  # run_decree.py: 128 (CLIP: 32; main.py's argparse default: 256)
    max_epochs: Sized = 1000  # code: 1000
    lr: Positive = 0.5  # run_decree.py: Adam lr 0.5, betas (0.5, 0.9)
    lr_epochs: tuple[int, int] = (30, 50)  # code: lr until epoch 30, then 0.1 until 50, then 0.05 (224 px: 200, 500)
    lr_later: tuple[float, float] = (0.1, 0.05)  # code: 0.1, 0.05
    # -- lambda: the weight of the mask's L1 norm --------------------------------------------
    init_lambda: Positive = 1e-3  # code: 1e-3
    lambda_factor: Positive = 5.0  # code: x5 up, /5 down
    patience: Sized = 5  # code: more than 5 consecutive steps above (below) tau raise (lower) lambda
    lambda_min: Positive = 1e-5  # code at 32 px: 1e-5 (224 px: 1e-7); lambda is divided only while >= it
    lambda_max: Positive = 1e5  # code: lambda is multiplied only while < 1e5
    lambda_reset_patience: Sized = 10  # code: lambda below lambda_min and more than 2 x patience valid steps -> init
    # -- success and stopping ---------------------------------------------------------------
    tau: Unit = 0.99  # code --thres 0.99: a trigger is valid when the batch's mean pairwise cosine exceeds it
    early_stop_patience: Sized = 10  # code at 32 px: 2 x patience steps without a smaller L1 (224 px: 7 x 5 = 35)
    # -- verdict ----------------------------------------------------------------------------
    # PL1 below it => trojaned. The paper's value was not re-read (not verified); a follow-up script uses 0.1.
    # The real 10 x 10 BadEncoder trigger covers 0.098 of a 32 px image.
    threshold: float = 0.1

    def __post_init__(self) -> None:
        validate(self)  # refused when the config is read, before any stage runs


def validate(cfg: DecreeConfig) -> None:
    """Refuse option values that cannot work, one line naming the fix."""
    lo, hi = cfg.lr_epochs
    checks = [
        (0 < cfg.threshold <= 1, f"threshold={cfg.threshold}: set defense.decree.threshold in (0, 1] (a share of "
                                 "the image, PL1)"),
        (cfg.shadow_images >= 2, f"shadow_images={cfg.shadow_images}: set defense.decree.shadow_images >= 2 (the "
                                 "self-similarity needs pairs of images; paper: 1000)"),
        (cfg.batch_size >= 2, f"batch_size={cfg.batch_size}: set defense.decree.batch_size >= 2 (code: 128)"),
        (cfg.max_epochs >= 1, f"max_epochs={cfg.max_epochs}: set defense.decree.max_epochs >= 1 (code: 1000)"),
        (cfg.lr > 0 and min(cfg.lr_later) > 0, "lr and lr_later must be positive: fix defense.decree.lr / lr_later"),
        (0 <= lo <= hi, f"lr_epochs={cfg.lr_epochs}: set defense.decree.lr_epochs to two epochs, first <= second"),
        (cfg.init_lambda > 0 and cfg.lambda_min > 0 and cfg.lambda_max > 0,
         "init_lambda, lambda_min and lambda_max must be positive: fix defense.decree's lambda options"),
        (cfg.lambda_factor > 1, f"lambda_factor={cfg.lambda_factor}: set defense.decree.lambda_factor > 1 (code: 5)"),
        (min(cfg.patience, cfg.lambda_reset_patience, cfg.early_stop_patience) >= 0,
         "patience, lambda_reset_patience and early_stop_patience must be at least 0"),
        (0 < cfg.tau < 1, f"tau={cfg.tau}: set defense.decree.tau in (0, 1) (code: 0.99)"),
    ]
    for ok, message in checks:
        if not ok:
            raise BenchError(f"decree: {message}")
