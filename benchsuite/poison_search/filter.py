"""The whole filter defense: cluster, search, train the poison classifier, draw pictures -> Detection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchsuite.api import Detection
from benchsuite.core.clustering import kmeans
from benchsuite.core.errors import BenchError
from benchsuite.eval.features import extract_features
from benchsuite.poison_search.classifier import ClassifierConfig, train_poison_classifier
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.locators import Located, Locator
from benchsuite.poison_search.pictures import save_attention_arrays, save_attention_maps, save_patch_grid
from benchsuite.poison_search.rsd import choose_window
from benchsuite.poison_search.search import SearchConfig, SearchResult, iterative_search
from benchsuite.poison_search.windows import window_side
from benchsuite.ssl.augment import AugmentConfig


@dataclass(frozen=True)
class FilterConfig:
    """Everything one filter run needs, resolved from a defense config (no defaults here)."""

    num_clusters: int
    kmeans_iters: int
    window: float | str  # pixels if > 1, fraction of the side if <= 1, or "auto" (RSD over rsd_windows)
    rsd_windows: tuple[float, ...]
    search: SearchConfig
    classifier: ClassifierConfig
    min_flip_fraction: float  # no-trigger guard: best score below this fraction of the flip set -> remove nothing
    batch_size: int  # encoder forwards per batch
    pictures: int  # attention maps drawn for the top images


def filter_config(options: Any, num_classes: int, num_images: int) -> FilterConfig:
    """Translate a PatchSearch/PoisonCAM defense config (same field names) into a :class:`FilterConfig`.

    ``num_clusters`` 0 means ``clusters_per_class`` x classes, capped at the number of images;
    ``flip_set_size`` 0 means one image per cluster (the papers' 1000 for l = 1000).
    """
    o = options
    clusters = o.num_clusters or min(num_images, max(1, round(o.clusters_per_class * num_classes)))
    search = SearchConfig(o.samples_per_iteration, o.prune_fraction, o.cluster_score, o.flip_score,
                          o.flip_set_size or clusters, o.prune_at_least_one, o.compat)
    augment = AugmentConfig(crop_scale=tuple(o.crop_scale), blur_prob=0.0)
    classifier = ClassifierConfig(o.top_k, o.top_p, o.classifier_models, o.classifier_width,
                                  o.classifier_stem_stride, o.classifier_batch_size, o.classifier_lr,
                                  o.classifier_momentum, o.classifier_weight_decay, o.classifier_iterations,
                                  o.classifier_eval_every, o.classifier_patience, o.paste_prob,
                                  tuple(o.patch_scale), o.patch_margin, augment, official_split=o.compat == "code")
    # the official code has no no-trigger guard (compat behaviour 7)
    guard = 0.0 if o.compat == "code" else o.min_flip_fraction
    return FilterConfig(clusters, o.kmeans_iters, o.window, tuple(o.rsd_windows), search, classifier,
                        guard, o.batch_size, o.pictures)


def _sides(cfg: FilterConfig, image_size: int) -> list[int]:
    if isinstance(cfg.window, str):
        if cfg.window != "auto":
            raise BenchError(f"window={cfg.window!r}: give pixels (> 1), a fraction of the side (<= 1) or 'auto'")
        return [window_side(float(w), image_size) for w in cfg.rsd_windows]
    return [window_side(float(cfg.window), image_size)]


def run_filter(ctx: Any, locator: Locator, cfg: FilterConfig) -> Detection:
    """Run the shared pipeline on a :class:`benchsuite.api.DefenseContext` with ``locator``."""
    images, n = ctx.images, len(ctx.images)
    sides = _sides(cfg, images.shape[1])  # fail fast on bad windows and k
    if 2 * cfg.classifier.top_k > n:
        raise BenchError(f"top_k={cfg.classifier.top_k} needs at least {2 * cfg.classifier.top_k} images "
                         f"(top-k and bottom-k), the dataset has {n}: lower top_k")
    norm = input_norm(ctx)
    runner = EncoderRunner(ctx.encoder, ctx.device, cfg.batch_size, norm=norm)
    features = ctx.features if ctx.features is not None and len(ctx.features) == n else \
        extract_features(ctx.encoder, images, device=ctx.device, augment_cfg=norm)
    clusters = kmeans(features, cfg.num_clusters, ctx.seed, cfg.kmeans_iters)

    kept_maps: dict[int, TopMaps] = {}  # per window side

    def search(side: int) -> SearchResult:
        kept_maps[side] = TopMaps(cfg.pictures)
        return iterative_search(runner, images, clusters, locator, side, cfg.search, ctx.seed,
                                on_located=kept_maps[side], features=features)

    if len(sides) > 1:
        result, rsd = choose_window(search, sides, cfg.min_flip_fraction)
    else:
        result, rsd = search(sides[0]), {}
    pictures = draw(ctx.workdir, images, result, locator.name, kept_maps[result.window], cfg)
    extras = dict(window=result.window, rsd={int(k): v for k, v in rsd.items()}, num_clusters=clusters.num_clusters,
                  iterations=result.iterations, scored=int(result.scored.sum()),
                  top_k=result.top(cfg.classifier.top_k).tolist(), pictures=pictures,
                  best_flip_share=result.best_flip_share, guard=cfg.min_flip_fraction)
    if not result.finds_trigger(cfg.min_flip_fraction):
        extras["trigger_found"] = False
        return Detection(result.ranked_scores, np.zeros(n, dtype=bool), result.windows, extras,
                         n_scored=extras["scored"], flag=_keep_all)
    classified = train_poison_classifier(images, result, cfg.classifier, ctx.seed, ctx.device)
    extras.update(trigger_found=True, classifier_f1=classified.f1, classifier_iterations=classified.iterations)
    return Detection(result.ranked_scores, classified.remove, result.windows, extras, n_scored=extras["scored"],
                     flag=classified.ensemble.flag)


def input_norm(ctx: Any) -> AugmentConfig:
    """The normalisation of the context's encoder (ImageNet's for a context without one)."""
    default = AugmentConfig()
    return AugmentConfig(mean=tuple(getattr(ctx, "mean", default.mean)), std=tuple(getattr(ctx, "std", default.std)))


def _keep_all(images: np.ndarray) -> np.ndarray:
    """The decision of a filter that found no trigger: remove nothing."""
    return np.zeros(len(images), dtype=bool)


class TopMaps:
    """The locator's maps of the ``keep`` best-scored images so far, kept as the search produced them.

    A score never changes once given, so the final top ``keep`` (score, then index) are among the
    best ``keep`` at every step.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.scores: dict[int, float] = {}
        self.maps: dict[int, np.ndarray] = {}

    def __call__(self, indices: np.ndarray, located: Located, scores: np.ndarray) -> None:
        new = {int(i): j for j, i in enumerate(indices)}
        candidates = {**self.scores, **{i: float(scores[j]) for i, j in new.items()}}
        best = sorted(candidates, key=lambda i: (-candidates[i], i))[: self.keep]
        # copies: a view would keep the whole batch of maps alive
        self.maps = {i: located.maps[new[i]].copy() if i in new else self.maps[i] for i in best}
        self.scores = {i: candidates[i] for i in best}


def draw(workdir: Path | str | None, images: np.ndarray, result: SearchResult, locator_name: str, kept: TopMaps,
         cfg: FilterConfig) -> list[str]:
    """Top-k patch grid and attention maps of the top images (the maps their windows were chosen from)."""
    if workdir is None:
        return []
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    saved = [save_patch_grid(result.patches(images, cfg.classifier.top_k), workdir / "top_patches.png")]
    top = result.top(cfg.pictures)
    if len(top):
        maps = np.stack([kept.maps[int(i)] for i in top])
        saved.append(save_attention_maps(images[top], maps, result.windows[top],
                                         workdir / f"attention_{locator_name}.png"))
        saved.append(save_attention_arrays(top, maps, result.windows[top], workdir / f"attention_{locator_name}.npz"))
    return [str(p) for p in saved if p is not None]
