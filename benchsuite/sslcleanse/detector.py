"""The detector: sample, cluster (K by SWK), reverse one trigger per cluster, MAD outlier test."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchsuite.api import Verdict
from benchsuite.api.context import IMAGENET_MEAN, IMAGENET_STD
from benchsuite.core.errors import BenchError
from benchsuite.eval.features import extract_features
from benchsuite.eval.trigger_codec import encode_trigger
from benchsuite.ssl.augment import AugmentConfig, to_float
from benchsuite.sslcleanse.config import MIN_CLUSTERS, SSLCleanseConfig, validate
from benchsuite.sslcleanse.inversion import Inversion, invert_triggers
from benchsuite.sslcleanse.outlier import anomaly_index
from benchsuite.sslcleanse.plots import plot_flagged, plot_swk, plot_triggers
from benchsuite.sslcleanse.swk import SWKResult, best_kmeans, choose_k


def sample_indices(n: int, ratio: float, seed: int, stream: int = 0) -> np.ndarray:
    """``round(ratio * n)`` (at least 1) distinct indices, sorted; the code samples with replacement."""
    size = max(1, round(ratio * n))
    return np.sort(np.random.default_rng([seed, 71, stream]).choice(n, size=size, replace=False))


def cluster_sample(features: np.ndarray, cfg: SSLCleanseConfig, seed: int) -> tuple[np.ndarray, SWKResult | None]:
    """Cluster labels 0..K-1 (empty k-means clusters dropped) and the SWK result when K was chosen."""
    n = len(features)
    swk = None
    if cfg.clusters is None:
        swk = choose_k(features, cfg.k_min, cfg.k_max, cfg.k_step, cfg.swk_window, seed, cfg.kmeans_iters,
                       cfg.kmeans_restarts)
    k = cfg.clusters or swk.k
    if k >= n:
        raise BenchError(f"sslcleanse: {k} clusters on {n} sampled images: raise ratio or lower clusters")
    assignments = best_kmeans(features, k, seed, cfg.kmeans_iters, cfg.kmeans_restarts)
    return np.unique(assignments, return_inverse=True)[1].astype(np.int64), swk


def detect(encoder: nn.Module, images: np.ndarray, features: np.ndarray | None, cfg: SSLCleanseConfig, seed: int,
           device: torch.device, workdir: Path | None = None, mean: tuple[float, ...] = IMAGENET_MEAN,
           std: tuple[float, ...] = IMAGENET_STD) -> Verdict:
    """Judge ``encoder`` with the defender's clean ``images`` (uint8 (N, H, W, 3)); pictures go to ``workdir``.
    ``mean`` / ``std``: the normalisation the encoder was trained with."""
    validate(cfg)
    start = time.perf_counter()
    idx = sample_indices(len(images), cfg.ratio, seed)
    norm = AugmentConfig(mean=tuple(mean), std=tuple(std))
    feats = features[idx] if features is not None else extract_features(encoder, images[idx], device=device,
                                                                        augment_cfg=norm)
    labels, swk = cluster_sample(feats, cfg, seed)
    encoder.to(device)
    x = to_float(torch.from_numpy(images[idx])).to(device)
    inv = invert_triggers(encoder, x, torch.from_numpy(feats).to(device), labels, cfg, seed, norm=norm)
    index, smallest, abstained = outlier_test(inv, cfg)
    trojaned = index > cfg.anomaly_threshold  # False for NaN (an abstention)
    extras = _extras(inv, idx, labels, swk, smallest, time.perf_counter() - start)
    warnings = verdict_warnings(swk, int(labels.max()) + 1)
    if abstained:
        extras["abstained"] = abstained
        warnings.append(abstained)
    if warnings:
        extras["warnings"] = warnings
    if workdir is not None:
        _pictures(Path(workdir), inv, swk, smallest, index, trojaned, images[idx][labels != smallest][0])
    return Verdict(bool(trojaned), float(index), float(cfg.anomaly_threshold), smallest if trojaned else None,
                   extras)


def outlier_test(inv: Inversion, cfg: SSLCleanseConfig) -> tuple[float, int, str]:
    """The MAD anomaly index over the clusters whose inversion converged (ASR reached the threshold), the
    smallest-norm one of them, and why the test abstained ("" when it did not).

    An unconverged cluster's norm is a placeholder (1), not a measurement: with half the clusters there the
    median is 1 and the MAD 0, and the index explodes (issue #24). With fewer than ``MIN_CLUSTERS`` converged
    clusters no outlier can be told from the rest: the index is NaN and the verdict benign.
    """
    converged = np.flatnonzero(inv.reached)
    k = len(inv.norms)
    # the smallest converged cluster; the smallest of all when none converged (its trigger still travels)
    smallest = int(converged[np.argmin(inv.norms[converged])]) if len(converged) else int(np.argmin(inv.norms))
    if len(converged) < MIN_CLUSTERS:
        why = (f"only {len(converged)} of {k} clusters converged (attack success >= asr_threshold "
               f"{cfg.asr_threshold}): the MAD test needs {MIN_CLUSTERS}, no verdict; raise "
               "defense.sslcleanse.epochs or lower asr_threshold")
        return float("nan"), smallest, why
    return anomaly_index(inv.norms[converged], cfg.mad_consistency, cfg.mad_scale), smallest, ""


def verdict_warnings(swk: SWKResult | None, k: int) -> list[str]:
    """One-line cautions on the verdict: SWK stopped at the bottom of its range, or too few clusters to flag."""
    warnings = []
    if swk is not None and len(swk.ks) > 1 and swk.k == swk.ks[0]:
        warnings.append(f"SWK chose K = k_min = {swk.k}, the first K tried (no knee inside k_min..k_max: the "
                        "curve falls or rises evenly, see swk.png); check it or fix defense.sslcleanse.clusters")
    if k < MIN_CLUSTERS:
        warnings.append(f"k-means left {k} non-empty clusters: the MAD index cannot flag below {MIN_CLUSTERS}; "
                        "raise defense.sslcleanse.ratio")
    return warnings


def _extras(inv: Inversion, idx: np.ndarray, labels: np.ndarray, swk: SWKResult | None, smallest: int,
            seconds: float) -> dict:
    # the sample and its clusters let the evaluator (who knows the labels) name the flagged cluster's class
    return {"k": int(labels.max()) + 1, "sampled": len(idx), "cluster_sizes": np.bincount(labels).tolist(),
            "sample": idx.tolist(), "clusters": labels.tolist(),
            "norms": [round(float(v), 6) for v in inv.norms], "asr": [round(float(v), 4) for v in inv.asr],
            "reached": inv.reached.tolist(), "unconverged": int((~inv.reached).sum()), "smallest": smallest,
            "swk": None if swk is None else swk.to_json(),
            "trigger": encode_trigger(inv.masks[smallest], inv.patterns[smallest]), "seconds": round(seconds, 1)}


def _pictures(workdir: Path, inv: Inversion, swk: SWKResult | None, smallest: int, index: float, trojaned: bool,
              example: np.ndarray) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if swk is not None:
        plot_swk(workdir / "swk.png", swk)
    plot_triggers(workdir / "triggers.png", inv, smallest, index, trojaned)
    plot_flagged(workdir / "reversed_trigger.png", inv.masks[smallest], inv.patterns[smallest],
                 example.astype(np.float32) / 255, smallest)
