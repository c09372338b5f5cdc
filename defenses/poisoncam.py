"""PoisonCAM: cluster activation masking locates the candidate trigger; then PatchSearch's flip
test, iterative search and poison classifier (spec section 5; no public code exists).

Defaults are scaled for the small (32 px, 10-class) data the suite runs on; the paper's value is in
the comment next to each. Where the paper leaves a gap, the choice is noted (spec 5.1-5.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchsuite.api import Defense, Detection
from benchsuite.hookspecs import hookimpl
from benchsuite.poison_search import MaskingLocator, filter_config, run_filter


@dataclass(frozen=True)
class PoisonCAMConfig:
    num_masks: int = 64  # paper B = 256 (at 224 px)
    num_clusters: int = 0  # 0 = clusters_per_class x classes; paper l = 1000 on ImageNet-100
    clusters_per_class: float = 5.0  # paper: 10 (1000 clusters / 100 classes)
    kmeans_iters: int = 20  # as PatchSearch's code: niter = 20
    window: float | str = 60 / 224  # pixels if > 1, fraction of the side if <= 1, "auto" = RSD; paper w = 60 of 224
    rsd_windows: tuple[float, ...] = (0.125, 0.1875, 0.25, 0.3125, 0.4375)  # PatchSearch: log-uniform [10, 200]
    flip_set_size: int = 0  # 0 = one image per cluster; paper 1000 (= l)
    samples_per_iteration: int = 2  # paper s = 2
    prune_fraction: float = 0.25  # paper r = 25 %
    prune_at_least_one: bool = True  # paper: search until all clusters are removed
    cluster_score: str = "sum"  # paper app. A: sum of the cluster's scores (PatchSearch code: max)
    flip_score: str = "into"  # paper text says "changed" ("any"); default keeps PatchSearch's definition
    min_flip_fraction: float = 0.1  # not in the papers (0 = off): best candidate flips less of the flip set -> keep all
    top_k: int = 20  # paper: |X^p| = 20
    top_p: float = 0.10  # paper: p = 10 %
    classifier_models: int = 3  # not stated; PatchSearch pipeline: 5
    classifier_width: int = 16  # not stated ("a ResNet"); PatchSearch: 64
    classifier_stem_stride: int = 1  # 1 = CIFAR stem at 32 px
    classifier_batch_size: int = 64  # PatchSearch pipeline: 32
    classifier_lr: float = 0.01  # PatchSearch: 0.01, cosine
    classifier_momentum: float = 0.9  # PatchSearch: 0.9
    classifier_weight_decay: float = 1e-4  # PatchSearch: 1e-4
    classifier_iterations: int = 400  # PatchSearch pipeline: max 2000
    classifier_eval_every: int = 20  # PatchSearch pipeline: 20
    classifier_patience: int = 10  # PatchSearch: 10 evaluations without F1 change
    paste_prob: float = 0.5  # PatchSearch: half the samples get a pasted patch
    patch_scale: tuple[float, float] = (20 / 224, 80 / 224)  # PatchSearch: side U{20..79} px at 224
    patch_margin: float = 10 / 224  # PatchSearch: 10 px at 224
    crop_scale: tuple[float, float] = (0.2, 1.0)  # "strong augmentations": RandomResizedCrop(scale=(0.2, 1))
    batch_size: int = 512  # masked copies per encoder batch (throughput only)
    pictures: int = 8  # attention maps drawn for the top images


class PoisonCAM(Defense):
    name = "poisoncam"
    kind = "filter"
    Config = PoisonCAMConfig
    description = "PoisonCAM: cluster activation masking + flip-test search + poison classifier"

    def detect(self, ctx) -> Detection:
        cfg = filter_config(self.config, ctx.num_classes, len(ctx.images))
        return run_filter(ctx, MaskingLocator(self.config.num_masks, ctx.seed), cfg)


@hookimpl
def benchsuite_defenses() -> list[type[Defense]]:
    return [PoisonCAM]
