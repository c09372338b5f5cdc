"""The mitigator: self-distillation that unlearns the reversed trigger (spec 7.2, the slides' form).

A student starts as a copy of the suspect encoder, the suspect itself is the frozen teacher. Each
clean image gives two augmented views; the reversed trigger is blended into ``trigger_fraction`` of
the second views; the student's representation of the second view is pulled (2 - 2 cos, i.e. the
normalised MSE) to the teacher's of the first. Triggered views so learn to look like their clean
image, clean views keep the teacher's features.

The SC code instead trains BYOL heads (a clean-view BYOL term plus a norm-MSE term on backbone and
head outputs, teacher = EMA with tau 1 = frozen) and pastes the trigger as a resized image; the
suite's backbones carry no projection heads, and the blend with the detector's own (mask, pattern)
needs no image conversion, so the slides' single representation-matching loss is used.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api.context import IMAGENET_MEAN, IMAGENET_STD
from benchsuite.core.console import progress_bar
from benchsuite.ssl.augment import AugmentConfig, augment, normalize, to_float
from benchsuite.sslcleanse.config import SSLCleanseConfig
from benchsuite.sslcleanse.inversion import frozen


def lr_factor(step: int, epoch: int, cfg: SSLCleanseConfig) -> float:
    """Linear warm-up over ``mitigate_warmup_steps``, then x0.2 at each drop (a fraction of the epochs)."""
    warm = min(1.0, (step + 1) / cfg.mitigate_warmup_steps) if cfg.mitigate_warmup_steps > 0 else 1.0
    drops = sum(epoch >= round(f * cfg.mitigate_epochs) for f in cfg.mitigate_lr_drops)
    return warm * 0.2**drops


def mitigate_encoder(encoder: nn.Module, images: np.ndarray, mask: np.ndarray, pattern: np.ndarray,
                     cfg: SSLCleanseConfig, seed: int, device: torch.device,
                     mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> nn.Module:
    """A repaired copy of ``encoder`` trained on clean uint8 ``images`` (N, H, W, 3) against the trigger;
    ``mean`` / ``std``: the normalisation the encoder was trained with."""
    aug = AugmentConfig(crop_scale=tuple(cfg.crop_scale), jitter_prob=cfg.jitter_prob, mean=tuple(mean),
                        std=tuple(std))
    student = copy.deepcopy(encoder).to(device).train().requires_grad_(True)
    encoder.to(device)
    m = torch.as_tensor(mask, dtype=torch.float32, device=device)[None, None]
    delta = normalize(torch.as_tensor(pattern, dtype=torch.float32, device=device)[None], aug)
    data = torch.from_numpy(images).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.mitigate_lr, weight_decay=cfg.mitigate_weight_decay)
    bs = min(cfg.mitigate_batch_size, len(images))
    steps = max(1, len(images) // bs)  # full batches only: BatchNorm needs more than one image
    n_trig = round(cfg.trigger_fraction * bs)
    step = 0
    with frozen(encoder) as teacher, progress_bar("SSL-Cleanse mitigation", total=cfg.mitigate_epochs) as advance:
        for epoch in range(cfg.mitigate_epochs):
            order = torch.randperm(len(images), generator=gen, device=device)
            for i in range(steps):
                x = to_float(data[order[i * bs:(i + 1) * bs]])
                first, second = augment(x, aug, gen), augment(x, aug, gen)
                rows = torch.randperm(len(x), generator=gen, device=device)[:n_trig]
                second[rows] = (1 - m) * second[rows] + m * delta
                with torch.no_grad():
                    target = teacher(first)
                loss = (2 - 2 * F.cosine_similarity(student(second), target, dim=-1)).mean()
                for group in opt.param_groups:
                    group["lr"] = cfg.mitigate_lr * lr_factor(step, epoch, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            advance(info=f"loss {loss.item():.3f}")
    return student.eval()
