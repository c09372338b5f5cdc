"""Probes on frozen features: a linear classifier on a small labelled split, and weighted kNN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F

from benchsuite.core.cache import added_field
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Bounds, Fraction, NonNegative, Positive, Sized

PROBE_SEEDS = (4787, 4788, 4789, 4790, 4791)  # PatchSearch's five linear-probe runs (spec 1.7)
PROBE_KINDS = ("linear", "knn", "mlp", "lincls")
IMAGE_PROBES = ("lincls",)  # probes that train on augmented images through the encoder, not cached features


@dataclass(frozen=True)
class ProbeConfig:
    kind: str = "linear"  # linear | knn | mlp (BadEncoder's downstream classifier) | lincls (PatchSearch's)
    label_fraction: Fraction = 0.01  # papers: 1 % of the training labels
    seeds: tuple[int, ...] = PROBE_SEEDS
    epochs: Sized = 100  # on cached features; full-batch steps for small splits
    lr: Positive = 0.01
    weight_decay: NonNegative = 1e-4
    knn_k: Sized = 200  # CTRL's kNN monitor: k = 200, t = 0.1, cosine, weighted votes
    knn_temperature: Positive = 0.1
    # kind = "mlp": BadEncoder's downstream classifier (spec 9.1): in-512-256-C, ReLU, dropout 0.5 after the
    # first layer, Adam 1e-4, batch 64, 500 epochs, on L2-normalised features
    mlp_hidden: tuple[int, ...] = added_field((512, 256))
    mlp_dropout: Annotated[float, Bounds(0, 1, high_open=True)] = added_field(0.5)
    mlp_lr: Positive = added_field(1e-4)
    mlp_batch_size: Sized = added_field(64)
    mlp_epochs: Sized = added_field(500)
    # draw the labelled splits with the cell's seed as well as the probe seed, so that "± over seeds" also
    # covers the split's variance; False (default): every cell seed is probed on the same splits
    vary_with_seed: bool = added_field(False)
    # kind = "lincls": PatchSearch's main_lincls.py on augmented images through the frozen backbone (spec 1.7)
    lincls_epochs: Sized = added_field(30)  # PS: 30
    lincls_lr: Positive = added_field(0.1)  # PS: 0.1 x batch / 256, per-epoch half-cosine
    lincls_batch_size: Sized = added_field(256)  # PS: 256
    lincls_crop_scale: tuple[float, float] = added_field((0.08, 1.0))  # PS: RandomResizedCrop's default


def labelled_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of ``floor(fraction * n_c)`` (at least one) random images of every class c."""
    if not 0 < fraction <= 1:
        raise BenchError(f"label fraction {fraction} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.choice(members, size=max(1, int(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(chosen))


class _Standardize:
    """L2-normalise, then standardise with the labelled split's mean/std (CompRess protocol)."""

    def __init__(self, feats: torch.Tensor) -> None:
        f = F.normalize(feats, dim=1)
        self.mean, self.std = f.mean(0), f.std(0, unbiased=False) + 1e-6

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (F.normalize(feats, dim=1) - self.mean) / self.std


def fit_linear(feats: np.ndarray, labels: np.ndarray, num_classes: int, cfg: ProbeConfig, seed: int):
    """Train a linear classifier (Adam, full batch) and return a predict(features) function."""
    torch.manual_seed(seed)
    x = torch.from_numpy(feats).float()
    y = torch.from_numpy(labels).long()
    prep = _Standardize(x)
    x = prep(x)
    head = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.normal_(head.weight, std=0.01)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        opt.zero_grad()
        F.cross_entropy(head(x), y).backward()
        opt.step()

    @torch.inference_mode()
    def predict(query: np.ndarray) -> np.ndarray:
        return head(prep(torch.from_numpy(query).float())).argmax(1).numpy()

    return predict


def fit_mlp(feats: np.ndarray, labels: np.ndarray, num_classes: int, cfg: ProbeConfig, seed: int):
    """BadEncoder's downstream MLP on L2-normalised features (minibatch Adam); returns predict(features)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.from_numpy(feats).float(), dim=1)
    y = torch.from_numpy(labels).long()
    layers: list[torch.nn.Module] = []
    width = x.shape[1]
    for i, hidden in enumerate(cfg.mlp_hidden):
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        if i == 0 and cfg.mlp_dropout > 0:
            layers.append(torch.nn.Dropout(cfg.mlp_dropout))
        width = hidden
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.mlp_lr)
    net.train()
    for _ in range(cfg.mlp_epochs):
        for batch in torch.randperm(len(x), generator=gen).split(cfg.mlp_batch_size):
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    net.eval()

    @torch.inference_mode()
    def predict(query: np.ndarray) -> np.ndarray:
        return net(F.normalize(torch.from_numpy(query).float(), dim=1)).argmax(1).numpy()

    return predict


def fit_knn(feats: np.ndarray, labels: np.ndarray, num_classes: int, cfg: ProbeConfig, seed: int):
    """Weighted cosine kNN (Wu et al. 2018 monitor) over the labelled split."""
    bank = F.normalize(torch.from_numpy(feats).float(), dim=1)
    bank_labels = torch.from_numpy(labels).long()
    k = min(cfg.knn_k, len(bank))

    @torch.inference_mode()
    def predict(query: np.ndarray) -> np.ndarray:
        preds = []
        for chunk in torch.from_numpy(query).float().split(2048):
            sim, idx = (F.normalize(chunk, dim=1) @ bank.T).topk(k, dim=1)
            votes = torch.zeros(len(chunk), num_classes)
            votes.scatter_add_(1, bank_labels[idx], torch.exp(sim / cfg.knn_temperature))
            preds.append(votes.argmax(1))
        return torch.cat(preds).numpy()

    return predict


def fit_probe(feats: np.ndarray, labels: np.ndarray, num_classes: int, cfg: ProbeConfig, seed: int):
    """Fit the configured probe on a labelled split chosen by ``seed``; returns predict()."""
    idx = labelled_split(labels, cfg.label_fraction, seed)
    if cfg.kind in IMAGE_PROBES:
        raise BenchError(f"probe {cfg.kind!r} trains on images, not features: use benchsuite.eval.lincls")
    fit = {"linear": fit_linear, "knn": fit_knn, "mlp": fit_mlp}.get(cfg.kind)
    if fit is None:
        raise BenchError(f"unknown probe {cfg.kind!r}: use {', '.join(PROBE_KINDS)}")
    return fit(feats[idx], labels[idx], num_classes, cfg, seed)
