"""The options shared by the PatchSearch and PoisonCAM filter defenses, with the papers' values.

Defaults are scaled for the suite's small (32 px, 10-class) data; the paper's value (ImageNet-100,
224 px) is in the comment next to each. Each defense subclasses this with its own differences.

``compat = "code"`` reproduces the official PatchSearch code where it departs from the papers'
intent ("paper", the default, keeps the intent), one behaviour each:

1. the flip test assigns the pasted flip images by their raw pooled features (no L2
   normalisation; the training assignments stay normalised);
2. a cluster's score counts its unscored members as 0 (``max``: a cluster with an unscored member
   scores at least 0);
3. unscored images rank at score 0, above negative scores (Detection scores, top-k accuracy);
4. the search stops once ``int(prune_fraction x clusters)`` is 0, i.e. at <= 3 clusters for r = 25 %
   (whatever ``prune_at_least_one`` says);
5. flip pastes draw top-left corners in [0, side - w) instead of [0, side - w];
6. the Grad-CAM target is the argmax of the cosine to the cluster means (mean of the members'
   L2-normalised features, also the head's weights) instead of the image's own cluster;
7. no no-trigger guard: ``min_flip_fraction`` is ignored (neither paper nor code has it);
8. the poison classifier's split: the top ``ceil(top_p x N)`` of the whole ranking are dropped (unscored
   images included) and the k lowest-ranked images are the validation negatives (the default drops only
   scored images and draws the negatives at random from the unscored tail);
9. on a ViT, Grad-CAM differentiates the largest coordinate of the raw CLS feature: the official
   search sets the ViT's head to an identity and assigns its k-means classifier to ``model.fc``,
   which a timm ViT never calls, so the cluster score never reaches the CAM (ResNets do call ``fc``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Count, NonNegative, Positive, Sized, Unit

Compat = Literal["paper", "code"]
COMPAT_MODES: tuple[Compat, ...] = ("paper", "code")
CLUSTER_SCORES = ("max", "sum", "total")


@dataclass(frozen=True)
class FilterDefenseConfig:
    num_clusters: Count = 0  # 0 = clusters_per_class x classes; paper l = 1000 on ImageNet-100
    clusters_per_class: Positive = 5.0  # paper: 10 (1000 clusters / 100 classes)
    kmeans_iters: Sized = 20  # PS code: niter = 20
    window: float | str = 60 / 224  # pixels if > 1, fraction of the side if <= 1, "auto" = RSD; paper w = 60 of 224
    rsd_windows: tuple[float, ...] = (0.125, 0.1875, 0.25, 0.3125, 0.4375)  # paper: log-uniform w in [10, 200] of 224
    flip_set_size: Count = 0  # 0 = one image per cluster; paper 1000 (= l)
    samples_per_iteration: Sized = 2  # paper s = 2
    prune_fraction: Unit = 0.25  # paper r = 25 %
    prune_at_least_one: bool = True  # paper: search until no cluster is left; PS code stops at <= 3 clusters
    cluster_score: str = "max"  # paper and PS code: max poison score of the cluster; "sum" (PoisonCAM), "total"
    flip_score: str = "into"  # PS code: flips into the candidate's cluster (new - orig); "any" = any change
    compat: str = "paper"  # "code" = the official PatchSearch code's behaviours (module docstring, 1-6)
    # not in the papers or code (0 = off; off in the paper presets and under compat = "code"): when the best
    # candidate flips less than this share of the flip set, remove nothing; results say when it fired
    min_flip_fraction: Unit = 0.1
    top_k: Sized = 20  # paper: top-20 poisons train the classifier
    top_p: Unit = 0.10  # paper: drop the top 10 % scored images from the negatives
    classifier_models: Sized = 3  # PS pipeline: 5 (code default 3)
    classifier_width: Sized = 16  # PS: 64 (ResNet BasicBlock (1, 1, 1, 1), widths 64-512)
    classifier_stem_stride: Sized = 1  # PS: ImageNet stem at 224 px; 1 = CIFAR stem at 32 px
    classifier_batch_size: Sized = 64  # PS pipeline: 32 (code default 256)
    classifier_lr: Positive = 0.01  # PS: 0.01, cosine over max iterations
    classifier_momentum: Unit = 0.9  # PS: 0.9
    classifier_weight_decay: NonNegative = 1e-4  # PS: 1e-4
    classifier_iterations: Sized = 400  # PS pipeline: max 2000 iterations
    classifier_eval_every: Sized = 20  # PS pipeline: 20
    classifier_patience: Sized = 10  # paper: stop when F1 has not changed for 10 evaluations
    paste_prob: Unit = 0.5  # PS: half the samples get a pasted patch
    patch_scale: tuple[float, float] = (20 / 224, 80 / 224)  # PS: pasted side U{20..79} px at 224
    patch_margin: float = 10 / 224  # PS: 10 px from the border at 224
    crop_scale: tuple[float, float] = (0.2, 1.0)  # PS: RandomResizedCrop(scale=(0.2, 1))
    batch_size: Sized = 512  # encoder forwards per batch (throughput only)
    pictures: Count = 8  # attention maps drawn for the top images

    def __post_init__(self) -> None:
        own = type(self) is not FilterDefenseConfig
        name = type(self).__name__.removesuffix("Config").lower() if own else "<defense>"
        if self.compat not in COMPAT_MODES:
            raise BenchError(f"compat = {self.compat!r} is not known: set defense.{name}.compat to 'paper' "
                             "(the papers' intent, default) or 'code' (the official PatchSearch code)")
        if self.cluster_score not in CLUSTER_SCORES:
            raise BenchError(f"cluster_score = {self.cluster_score!r} is not known: set "
                             f"defense.{name}.cluster_score to one of {', '.join(CLUSTER_SCORES)}")

