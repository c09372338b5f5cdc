"""Every SSL-Cleanse option in one place (spec section 7); the SC code's / paper's value in the comment.

"code" is the SC repository (``detector/cfg.py``, ``mitigator/cfg.py``) and its README's ImageNet-100
command; "slides" the ECCV'24 talk. The defaults follow the README run where it overrides cfg.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Count, Fraction, NonNegative, Positive, Sized, Unit


@dataclass(frozen=True)
class SSLCleanseConfig:
    # -- data --------------------------------------------------------------------------------
    ratio: Fraction = 0.01  # code README: --ratio 0.01 of the defender's images (sampled with replacement there)

    # -- K by SWK ----------------------------------------------------------------------------
    clusters: int | None = None  # fix K and skip SWK (code README: 12 for ImageNet-100)
    # at least 3: with two clusters the MAD anomaly index is always 1 / 1.4826 = 0.674 (never flagged)
    k_min: Sized = 3  # paper (slides' CIFAR-10 curve, K in 2..28): 2; ImageNet-100: 10..200
    k_max: Sized = 30
    k_step: Sized = 1  # slides: 2 (CIFAR-10), 10 (ImageNet-100)
    swk_window: Sized = 3  # K values averaged per point of the smoothed curve [GAP: not released]
    kmeans_iters: Sized = 20  # faiss k-means iterations (code: sklearn KMeans, random_state=0)
    kmeans_restarts: Sized = 30  # the lowest-inertia of this many seeds; code: n_init=30

    # -- trigger reverse-engineering (per cluster, all clusters in one batch) ------------------
    epochs: Sized = 200  # code cfg.py: 200 (README ImageNet: 1000)
    batch_size: Sized = 32  # per cluster; code README: 32 (cfg.py: 512)
    lr: Positive = 0.1  # code: Adam(lr 0.1, betas (0.5, 0.9))
    inversion_images: int | None = None  # images per cluster; None = N - largest cluster (code)
    init_cost: NonNegative = 0.1  # lambda_0; code README: 0.1 (cfg.py: 1e-4)
    asr_threshold: Unit = 0.99  # code README: 0.99 (cfg.py: 0.98)
    patience: Sized = 5  # code cfg.py: 5 (Neural-Cleanse schedule)
    cost_multiplier: Positive = 1.5  # code cfg.py: x1.5 up, /1.5 down
    knn_sample_num: Sized = 1000  # triggered images per cluster for the 1-NN ASR; code README: 1000
    target_center: bool = False  # code --target_center: pull towards the centroid, not a random member
    knn_center: bool = False  # code --knn_center: 1-NN against centroids instead of every representation
    mask_penalty: str = "mask"  # "mask": L1 of m (slides, SC decree.py); "mask_pattern": mean(m*delta) (code)
    clusters_per_pass: Count = 0  # clusters in one forward pass; 0 = all (lower it when memory is short)

    # -- outlier test ------------------------------------------------------------------------
    mad_consistency: float = 1.4826  # c in the slides' anomaly index
    mad_scale: float = 1.0  # extra MAD factor: code utils.py divides by 0.6745 as well (1 / 0.6745 = 1.4826)
    anomaly_threshold: float = 2.0  # slides (Neural Cleanse's rule): index > 2 => trojaned

    # -- mitigator ---------------------------------------------------------------------------
    mitigate_when: str = "trojaned"  # "trojaned" (slides' pipeline), "always" (argmin trigger) or "never"
    mitigate_ratio: Fraction = 0.05  # share of the defender's images [GAP: code reads its own train list]
    mitigate_epochs: Sized = 500  # code (CIFAR README): 500
    mitigate_batch_size: Sized = 256  # code (CIFAR README): 1536
    mitigate_lr: Positive = 3e-3  # code README: Adam lr 3e-3
    mitigate_weight_decay: NonNegative = 1e-6  # code: 1e-6
    mitigate_warmup_steps: Count = 500  # code: 500 warm-up iterations
    mitigate_lr_drops: tuple[float, ...] = (0.9, 0.95)  # code: x0.2 50 and 25 epochs before the end of 500
    trigger_fraction: Unit = 0.5  # slides: the trigger on half of the second views
    crop_scale: tuple[float, float] = (0.2, 1.0)  # the views' RandomResizedCrop scale (BYOL recipe)
    jitter_prob: Unit = 0.8  # the views' colour-jitter probability (BYOL recipe)

    def __post_init__(self) -> None:
        validate(self)  # refused when the config is read, before any stage runs


MIN_CLUSTERS = 3
# read by the mitigator only: a verdict does not depend on them
MITIGATION_ONLY = ("mitigate_when", "mitigate_ratio", "mitigate_epochs", "mitigate_batch_size", "mitigate_lr",
                   "mitigate_weight_decay", "mitigate_warmup_steps", "mitigate_lr_drops", "trigger_fraction",
                   "crop_scale", "jitter_prob")


def detection_options(cfg: SSLCleanseConfig) -> dict:
    """The options the detector reads (the inspect stage's cache key): all but :data:`MITIGATION_ONLY`."""
    return {name: value for name, value in asdict(cfg).items() if name not in MITIGATION_ONLY}
_WHY = "with 2 clusters the MAD anomaly index is always 1/1.4826 = 0.674 and can never flag"


def validate(cfg: SSLCleanseConfig) -> None:
    """Refuse option values that cannot work, one line naming the fix."""
    checks = [
        (0 < cfg.ratio <= 1, f"ratio={cfg.ratio} must be in (0, 1] (a share of the defender's images)"),
        (0 < cfg.mitigate_ratio <= 1, f"mitigate_ratio={cfg.mitigate_ratio} must be in (0, 1]"),
        (cfg.clusters is None or cfg.clusters >= MIN_CLUSTERS,
         f"clusters={cfg.clusters}: set defense.sslcleanse.clusters >= {MIN_CLUSTERS} (or unset it for SWK); {_WHY}"),
        (cfg.k_min >= MIN_CLUSTERS, f"k_min={cfg.k_min}: set defense.sslcleanse.k_min >= {MIN_CLUSTERS}; {_WHY}"),
        (cfg.k_max >= cfg.k_min, f"k_max={cfg.k_max} is below k_min={cfg.k_min}: raise defense.sslcleanse.k_max"),
        (cfg.k_step >= 1 and cfg.swk_window >= 1, "k_step and swk_window must be at least 1"),
        (cfg.epochs >= 1 and cfg.batch_size >= 1 and cfg.knn_sample_num >= 1,
         "epochs, batch_size and knn_sample_num must be at least 1"),
        (cfg.inversion_images is None or cfg.inversion_images >= 1, "inversion_images must be at least 1 (or unset)"),
        (0 < cfg.asr_threshold <= 1, f"asr_threshold={cfg.asr_threshold} must be in (0, 1]"),
        (cfg.mask_penalty in ("mask", "mask_pattern"), f"mask_penalty={cfg.mask_penalty!r}: use mask or mask_pattern"),
        (cfg.mitigate_when in ("trojaned", "always", "never"),
         f"mitigate_when={cfg.mitigate_when!r}: use trojaned, always or never"),
        (0 <= cfg.trigger_fraction <= 1, f"trigger_fraction={cfg.trigger_fraction} must be in [0, 1]"),
        (cfg.mitigate_epochs >= 0 and cfg.mitigate_batch_size >= 2,
         "mitigate_epochs must be at least 0 and mitigate_batch_size at least 2"),
    ]
    for ok, message in checks:
        if not ok:
            raise BenchError(f"sslcleanse: {message}")
