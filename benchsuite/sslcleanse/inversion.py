"""Per-cluster trigger reverse-engineering, every cluster optimised in the same forward pass (spec 7.1 step 2).

For cluster k a mask m_k and pattern delta_k (tanh-parametrised, in [0, 1]) are optimised so that images
of other clusters with the trigger, (1 - m) x + m delta, map close (cosine) to cluster k's representations,
plus lambda_k times the mask's L1 norm. lambda_k follows the Neural-Cleanse schedule; after each epoch a
1-NN attack success rate decides whether the epoch's mask norm is the new best. The clusters' parameters
are independent (their losses are summed), so one Adam over the stacked (K, ...) tensors equals K runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.core.console import progress_bar
from benchsuite.core.errors import BenchError
from benchsuite.ssl.augment import AugmentConfig, normalize
from benchsuite.sslcleanse.config import SSLCleanseConfig

_EPS = 1e-6


@dataclass
class Inversion:
    masks: np.ndarray  # (K, H, W) in [0, 1]: the kept (smallest successful) mask, else the last one
    patterns: np.ndarray  # (K, 3, H, W) in [0, 1]
    norms: np.ndarray  # (K,) best epoch-average penalty; 1 where the ASR never reached the threshold
    asr: np.ndarray  # (K,) 1-NN attack success rate of the kept trigger
    reached: np.ndarray  # (K,) bool, the ASR reached the threshold at least once


def apply_trigger(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 - m) x + m delta on [0, 1] images (the same as the code's blend in normalised space)."""
    return (1 - mask) * x + mask * pattern


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """The module in eval mode without parameter gradients; flags and mode restored afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    training = module.training
    module.eval().requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
        module.train(training)


class CostSchedule:
    """Neural Cleanse's lambda schedule, one lambda per cluster.

    lambda stays 0 until the ASR has reached the threshold for ``patience`` epochs, then is lambda_0;
    afterwards x ``multiplier`` after ``patience`` epochs in a row above the threshold, / after as many below.
    """

    def __init__(self, k: int, init_cost: float, patience: int, multiplier: float) -> None:
        self.cost = np.zeros(k)
        self.init_cost, self.patience, self.multiplier = init_cost, patience, multiplier
        self.set_count, self.up, self.down = (np.zeros(k, dtype=np.int64) for _ in range(3))

    def update(self, reached: np.ndarray) -> None:
        unset = self.cost == 0
        self.set_count = np.where(unset & reached, self.set_count + 1, 0)
        start = unset & (self.set_count >= self.patience)
        self.cost[start] = self.init_cost
        active = ~unset
        self.up = np.where(active & reached, self.up + 1, 0)
        self.down = np.where(active & ~reached, self.down + 1, 0)
        raise_, lower = self.up >= self.patience, self.down >= self.patience
        self.cost[raise_] *= self.multiplier
        self.cost[lower] /= self.multiplier
        self.up[raise_] = 0
        self.down[lower] = 0


def _atanh_uniform(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1] values mapped to the tanh parametrisation (Neural Cleanse's initialisation)."""
    return torch.atanh((2 * torch.rand(shape, generator=gen) - 1) * (1 - _EPS))


def _pools(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """(K, size) indices of images from clusters other than k, drawn without replacement."""
    rows = []
    for c in range(int(labels.max()) + 1):
        others = torch.nonzero(labels != c)[:, 0]
        rows.append(others[torch.randperm(len(others), generator=gen)[:size]])
    return torch.stack(rows)


def _targets(reps: torch.Tensor, labels: torch.Tensor, size: int, centre: bool, gen: torch.Generator) -> torch.Tensor:
    """(K, size, D): for each pool slot a random representation of cluster k, or cluster k's centroid."""
    rows = []
    for c in range(int(labels.max()) + 1):
        members = reps[labels == c]
        if centre:
            rows.append(members.mean(0).expand(size, -1))
        else:
            rows.append(members[torch.randint(len(members), (size,), generator=gen)])
    return torch.stack(rows)


class _Trigger(nn.Module):
    """The K masks and patterns in tanh space."""

    def __init__(self, k: int, size: tuple[int, int], gen: torch.Generator) -> None:
        super().__init__()
        self.mask_raw = nn.Parameter(_atanh_uniform((k, 1, *size), gen))
        self.pattern_raw = nn.Parameter(_atanh_uniform((k, 3, *size), gen))

    def forward(self, rows: slice | torch.Tensor = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.mask_raw[rows]) / 2 + 0.5, torch.tanh(self.pattern_raw[rows]) / 2 + 0.5


def _penalty(mask: torch.Tensor, pattern: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-cluster mean of m (L1 / pixels) or of m * delta (the code's variant)."""
    value = mask if kind == "mask" else mask * pattern
    return value.flatten(1).mean(1)


class _Encoder:
    """Normalise, encode, reshape back to (K, B, D); batches of at most ``chunk`` images."""

    def __init__(self, encoder: nn.Module, aug: AugmentConfig, chunk: int) -> None:
        self.encoder, self.aug, self.chunk = encoder, aug, chunk

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = normalize(x.flatten(0, 1), self.aug)
        out = torch.cat([self.encoder(flat[i:i + self.chunk]) for i in range(0, len(flat), self.chunk)])
        return out.view(*x.shape[:2], -1).float()


def invert_triggers(encoder: nn.Module, images: torch.Tensor, reps: torch.Tensor, labels: np.ndarray,
                    cfg: SSLCleanseConfig, seed: int, label: str = "SSL-Cleanse triggers",
                    norm: AugmentConfig | None = None) -> Inversion:
    """Reverse-engineer one trigger per cluster; ``images`` (N, 3, H, W) in [0, 1], ``reps`` their features;
    ``norm``: the encoder's input normalisation (ImageNet's by default)."""
    device = images.device
    lab = torch.as_tensor(labels, dtype=torch.int64)
    k = int(lab.max()) + 1
    sizes = torch.bincount(lab, minlength=k)
    if (sizes == 0).any():
        raise BenchError(f"cluster(s) {torch.nonzero(sizes == 0)[:, 0].tolist()} are empty: relabel the clusters")
    n_pool = len(lab) - int(sizes.max())
    if n_pool < 1:
        raise BenchError(f"one cluster holds all {len(lab)} sampled images: raise ratio or clusters")
    n_pool = min(n_pool, cfg.inversion_images or n_pool)
    gen = torch.Generator().manual_seed(seed)
    pools = _pools(lab, n_pool, gen).to(device)
    targets = _targets(reps.cpu(), lab, n_pool, cfg.target_center, gen).to(device)
    if cfg.knn_center:
        reference = torch.stack([reps[lab.to(device) == c].mean(0) for c in range(k)])
        ref_labels = torch.arange(k, device=device)
    else:
        reference, ref_labels = reps, lab.to(device)
    reference = F.normalize(reference.float(), dim=1)

    trigger = _Trigger(k, tuple(images.shape[-2:]), gen).to(device)
    opt = torch.optim.Adam(trigger.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    schedule = CostSchedule(k, cfg.init_cost, cfg.patience, cfg.cost_multiplier)
    per_pass = cfg.clusters_per_pass or k
    bs = min(cfg.batch_size, n_pool)
    steps = -(-n_pool // bs)
    n_eval = min(cfg.knn_sample_num, n_pool)
    best_norm, best_asr = np.ones(k), np.zeros(k)
    with torch.no_grad():
        best_mask, best_pattern = (t.clone() for t in trigger())
    encode = _Encoder(encoder, norm or AugmentConfig(), chunk=max(per_pass * bs, 1))
    with frozen(encoder), progress_bar(label, total=cfg.epochs) as advance:
        for _ in range(cfg.epochs):
            order = torch.stack([torch.randperm(n_pool, generator=gen) for _ in range(k)]).to(device)
            penalty_sum = torch.zeros(k, device=device)
            cost = torch.as_tensor(schedule.cost, dtype=torch.float32, device=device)
            for step in range(steps):
                cols = order[:, step * bs:(step + 1) * bs]
                opt.zero_grad(set_to_none=True)
                for start in range(0, k, per_pass):
                    rows = slice(start, start + per_pass)
                    mask, pattern = trigger(rows)
                    slots = cols[rows]
                    x = apply_trigger(images[pools[rows].gather(1, slots)], mask[:, None], pattern[:, None])
                    z = targets[rows].gather(1, slots[..., None].expand(-1, -1, targets.shape[-1]))
                    similarity = (2 - 2 * F.cosine_similarity(encode(x), z, dim=-1)).mean(1)
                    penalty = _penalty(mask, pattern, cfg.mask_penalty)
                    (similarity + cost[rows] * penalty).sum().backward()
                    penalty_sum[rows] += penalty.detach()
                opt.step()
            asr = _attack_success(trigger, encode, images, pools, n_eval, reference, ref_labels, gen)
            norms = (penalty_sum / steps).cpu().numpy()
            reached = asr >= cfg.asr_threshold
            better = reached & (norms < best_norm)
            if better.any():
                with torch.no_grad():
                    mask, pattern = trigger()
                    keep = torch.from_numpy(better).to(device)
                    best_mask[keep], best_pattern[keep] = mask[keep], pattern[keep]
                best_norm[better], best_asr[better] = norms[better], asr[better]
            schedule.update(reached)
            advance(info=f"min norm {best_norm.min():.3f}")
    never = best_asr < cfg.asr_threshold
    if never.any():  # report the last trigger and its ASR where none ever succeeded
        with torch.no_grad():
            mask, pattern = trigger()
            keep = torch.from_numpy(never).to(device)
            best_mask[keep], best_pattern[keep] = mask[keep], pattern[keep]
        best_asr[never] = asr[never]
    return Inversion(best_mask[:, 0].cpu().numpy(), best_pattern.cpu().numpy(), best_norm, best_asr, ~never)


@torch.inference_mode()
def _attack_success(trigger: _Trigger, encode: _Encoder, images: torch.Tensor, pools: torch.Tensor, n_eval: int,
                    reference: torch.Tensor, ref_labels: torch.Tensor, gen: torch.Generator) -> np.ndarray:
    """Fraction of ``n_eval`` triggered pool images per cluster whose 1-NN (cosine) lies in that cluster."""
    k = len(pools)
    cols = torch.stack([torch.randperm(pools.shape[1], generator=gen)[:n_eval] for _ in range(k)]).to(pools.device)
    mask, pattern = trigger()
    feats = encode(apply_trigger(images[pools.gather(1, cols)], mask[:, None], pattern[:, None]))
    nearest = (F.normalize(feats, dim=-1) @ reference.T).argmax(-1)  # (K, n_eval)
    hits = ref_labels[nearest] == torch.arange(k, device=pools.device)[:, None]
    return hits.float().mean(1).cpu().numpy()
