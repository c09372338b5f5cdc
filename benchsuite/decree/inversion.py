"""DECREE's trigger inversion (spec 10.1, after the official ``main.py``; written anew, not ported).

One mask m (H x W, shared by the three channels) and one pattern p (3 x H x W), each through tanh into
[0, 1], make every shadow image x into x' = (1 - m) x + m p. The loss asks the encoder's embeddings of a
triggered batch to collapse, -mean_{i != j} cos(E(x'_i), E(x'_j)), at the least L1 norm of the mask,
+ lambda * sum |m| (summed over the three channels, as the code does). A backdoored encoder collapses on a
small trigger, a clean one only when most of the image is covered.

Everything counts in optimisation steps (batches), as in the code: lambda's schedule, the best trigger (the
smallest L1 of a step whose batch self-similarity exceeds tau) and the early stop (more than
``early_stop_patience`` steps without a smaller L1, checked at the end of an epoch whose mean self-similarity
exceeds tau).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.core.console import progress_bar
from benchsuite.decree.config import DecreeConfig
from benchsuite.ssl.augment import AugmentConfig, normalize, to_float

_EPS = 1e-6  # keeps arctanh of the initial values finite


@dataclass
class Inversion:
    mask: np.ndarray  # (H, W) in [0, 1]: the best valid trigger's, else the last step's
    pattern: np.ndarray  # (3, H, W) in [0, 1]
    valid: bool  # some step's batch self-similarity exceeded tau
    l1: float  # the code's L1: sum of the mask over H x W x 3 (inf without a valid trigger)
    pl1: float  # l1 / (3 H W), the share of the image the trigger needs (1 without a valid trigger)
    self_similarity: float  # the best trigger's batch self-similarity (the last step's without one)
    epochs: int
    steps: int
    stopped_early: bool
    lam: float  # lambda at the end
    history: dict[str, list[float]] = field(default_factory=dict)  # per epoch: self_sim, l1, lambda, lr


class LambdaSchedule:
    """The code's lambda, updated after every step from the step's batch self-similarity.

    More than ``patience`` consecutive valid steps (self-similarity > tau) multiply lambda by ``factor`` (while it
    is below ``cap``); more than ``patience`` invalid ones divide it (while it is at least ``floor``: the last
    division may go one factor below the floor, after which it stays). Below the floor, more than
    ``reset_patience`` consecutive valid steps set it back to ``init``.
    """

    def __init__(self, init: float, factor: float, patience: int, floor: float, cap: float, reset_patience: int,
                 tau: float) -> None:
        self.value, self.init, self.factor, self.patience = init, init, factor, patience
        self.floor, self.cap, self.reset_patience, self.tau = floor, cap, reset_patience, tau
        self.up = self.down = self.below_floor_valid = 0

    def update(self, self_similarity: float) -> float:
        valid = self_similarity > self.tau
        if self.value < self.floor and valid:
            self.below_floor_valid += 1
            if self.below_floor_valid > self.reset_patience:
                self.value, self.up, self.down = self.init, 0, 0
        else:
            self.below_floor_valid = 0
        self.up, self.down = (self.up + 1, 0) if valid else (0, self.down + 1)
        if self.up > self.patience:
            if self.value < self.cap:
                self.value *= self.factor
            self.up = 0
        elif self.down > self.patience:
            if self.value >= self.floor:
                self.value /= self.factor
            self.down = 0
        return self.value


def learning_rate(epoch: int, cfg: DecreeConfig) -> float:
    """The code's step schedule: ``lr`` before ``lr_epochs[0]``, then ``lr_later[0]``, from ``lr_epochs[1]`` on
    ``lr_later[1]``."""
    if epoch < cfg.lr_epochs[0]:
        return cfg.lr
    return cfg.lr_later[0] if epoch < cfg.lr_epochs[1] else cfg.lr_later[1]


def self_similarity(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the ordered pairs i != j of a batch, from the sum of the unit vectors (no n x n matrix)."""
    n = len(features)
    z = F.normalize(features.float(), dim=1)
    total = z.sum(0)
    return (total @ total - (z * z).sum()) / (n * (n - 1))


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


class _Encode:
    """Normalise as the encoder was trained (``norm``), encode; bf16 autocast and channels_last on CUDA only."""

    def __init__(self, encoder: nn.Module, device: torch.device, norm: AugmentConfig | None = None) -> None:
        self.encoder, self.cuda, self.aug = encoder, device.type == "cuda", norm or AugmentConfig()
        if self.cuda:
            encoder.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.aug)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            return self.encoder(x).float()


def _initial(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Uniform [0, 1) values in the tanh parametrisation (the code's ``mask_init = 'rand'``), float64 as there."""
    return torch.atanh((2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1) * (1 - _EPS))


def _trigger(mask_raw: torch.Tensor, pattern_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tanh(mask_raw) / 2 + 0.5, torch.tanh(pattern_raw) / 2 + 0.5


def invert_trigger(encoder: nn.Module, images: torch.Tensor, cfg: DecreeConfig, seed: int,
                   label: str = "DECREE trigger", norm: AugmentConfig | None = None) -> Inversion:
    """Invert the trigger of ``encoder`` on shadow ``images`` (N, H, W, 3) uint8 on the device of the run;
    ``norm``: the encoder's input normalisation (ImageNet's by default)."""
    device = images.device
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    gen = torch.Generator().manual_seed(seed)
    mask_raw = _initial((h, w), gen).to(device).requires_grad_()
    pattern_raw = _initial((3, h, w), gen).to(device).requires_grad_()
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=cfg.lr, betas=(0.5, 0.9))
    schedule = LambdaSchedule(cfg.init_lambda, cfg.lambda_factor, cfg.patience, cfg.lambda_min, cfg.lambda_max,
                              cfg.lambda_reset_patience, cfg.tau)
    bs = min(cfg.batch_size, n)
    best_l1, best_sim, best = math.inf, float("nan"), None
    stale, stale_best = 0, math.inf  # steps without a smaller L1 once a valid trigger exists (the code's early stop)
    history: dict[str, list[float]] = {"self_sim": [], "l1": [], "lambda": [], "lr": []}
    steps, epoch, stopped = 0, 0, False
    encode = _Encode(encoder, device, norm)
    with frozen(encoder), progress_bar(label, total=cfg.max_epochs) as advance:
        for epoch in range(1, cfg.max_epochs + 1):
            lr = learning_rate(epoch - 1, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            order = torch.randperm(n, generator=gen).to(device)
            sims, l1s = [], []
            for start in range(0, n, bs):
                batch = order[start:start + bs]
                if len(batch) < 2:  # one image has no pair to compare (the code's loader would give NaN)
                    continue
                mask, pattern = _trigger(mask_raw, pattern_raw)
                m, p = mask.float(), pattern.float()
                x = ((1 - m) * to_float(images[batch]) + m * p).clamp(0, 1)
                sim = self_similarity(encode(x))
                l1 = 3 * mask.sum()  # the code's L1: the mask repeated over the three channels
                loss = -sim + schedule.value * l1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sim_v, l1_v = float(sim.detach()), float(l1.detach())
                sims.append(sim_v)
                l1s.append(l1_v)
                steps += 1
                if sim_v > cfg.tau and l1_v < best_l1:  # the trigger this step was computed with
                    best_l1, best_sim = l1_v, sim_v
                    best = (mask.detach().float().cpu(), pattern.detach().float().cpu())
                if best is not None:
                    stale = stale + 1 if best_l1 >= stale_best else 0
                stale_best = min(stale_best, best_l1)
                schedule.update(sim_v)
            epoch_sim = float(np.mean(sims))
            for name, value in (("self_sim", epoch_sim), ("l1", float(np.mean(l1s))), ("lambda", schedule.value),
                                ("lr", lr)):
                history[name].append(value)
            advance(info=f"self-sim {epoch_sim:.3f}  best PL1 {best_l1 / (3 * h * w):.3f}")
            if epoch_sim > cfg.tau and stale > cfg.early_stop_patience:
                stopped = True
                break
    valid = best is not None
    if not valid:  # report the last trigger, its self-similarity and PL1 1 (the whole image)
        with torch.no_grad():
            mask, pattern = _trigger(mask_raw, pattern_raw)
        best = (mask.float().cpu(), pattern.float().cpu())
        best_sim = sims[-1] if sims else float("nan")
    pl1 = best_l1 / (3 * h * w) if valid else 1.0
    return Inversion(best[0].numpy(), best[1].numpy(), valid, best_l1, pl1, best_sim, epoch, steps, stopped,
                     schedule.value, history)


@torch.inference_mode()
def triggered_self_similarity(encoder: nn.Module, images: torch.Tensor, mask: np.ndarray, pattern: np.ndarray,
                              batch_size: int = 256, norm: AugmentConfig | None = None) -> float:
    """The mean pairwise cosine of all ``images`` (N, H, W, 3) uint8 with the trigger, in batched forwards."""
    device = images.device
    m = torch.as_tensor(mask, device=device)
    p = torch.as_tensor(pattern, device=device)
    encode = _Encode(encoder, device, norm)
    with frozen(encoder):
        feats = torch.cat([encode(((1 - m) * to_float(images[i:i + batch_size]) + m * p).clamp(0, 1))
                           for i in range(0, len(images), batch_size)])
    return float(self_similarity(feats)) if len(feats) > 1 else float("nan")
