"""The options shared by the PatchSearch and PoisonCAM filter defenses, with the papers' values.

Defaults are scaled for the suite's small (32 px, 10-class) data; the paper's value (ImageNet-100,
224 px) is in the comment next to each. Each defense subclasses this with its own differences.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilterDefenseConfig:
    num_clusters: int = 0  # 0 = clusters_per_class x classes; paper l = 1000 on ImageNet-100
    clusters_per_class: float = 5.0  # paper: 10 (1000 clusters / 100 classes)
    kmeans_iters: int = 20  # PS code: niter = 20
    window: float | str = 60 / 224  # pixels if > 1, fraction of the side if <= 1, "auto" = RSD; paper w = 60 of 224
    rsd_windows: tuple[float, ...] = (0.125, 0.1875, 0.25, 0.3125, 0.4375)  # paper: log-uniform w in [10, 200] of 224
    flip_set_size: int = 0  # 0 = one image per cluster; paper 1000 (= l)
    samples_per_iteration: int = 2  # paper s = 2
    prune_fraction: float = 0.25  # paper r = 25 %
    prune_at_least_one: bool = True  # paper: search until no cluster is left; PS code stops at <= 3 clusters
    cluster_score: str = "max"  # paper and PS code: max poison score of the cluster
    flip_score: str = "into"  # PS code: flips into the candidate's cluster (new - orig); "any" = any change
    min_flip_fraction: float = 0.1  # not in the papers (0 = off): best candidate flips less of the flip set -> keep all
    top_k: int = 20  # paper: top-20 poisons train the classifier
    top_p: float = 0.10  # paper: drop the top 10 % scored images from the negatives
    classifier_models: int = 3  # PS pipeline: 5 (code default 3)
    classifier_width: int = 16  # PS: 64 (ResNet BasicBlock (1, 1, 1, 1), widths 64-512)
    classifier_stem_stride: int = 1  # PS: ImageNet stem at 224 px; 1 = CIFAR stem at 32 px
    classifier_batch_size: int = 64  # PS pipeline: 32 (code default 256)
    classifier_lr: float = 0.01  # PS: 0.01, cosine over max iterations
    classifier_momentum: float = 0.9  # PS: 0.9
    classifier_weight_decay: float = 1e-4  # PS: 1e-4
    classifier_iterations: int = 400  # PS pipeline: max 2000 iterations
    classifier_eval_every: int = 20  # PS pipeline: 20
    classifier_patience: int = 10  # paper: stop when F1 has not changed for 10 evaluations
    paste_prob: float = 0.5  # PS: half the samples get a pasted patch
    patch_scale: tuple[float, float] = (20 / 224, 80 / 224)  # PS: pasted side U{20..79} px at 224
    patch_margin: float = 10 / 224  # PS: 10 px from the border at 224
    crop_scale: tuple[float, float] = (0.2, 1.0)  # PS: RandomResizedCrop(scale=(0.2, 1))
    batch_size: int = 512  # encoder forwards per batch (throughput only)
    pictures: int = 8  # attention maps drawn for the top images

