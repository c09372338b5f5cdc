"""PatchSearch's linear evaluation (``main_lincls.py``, spec 1.7) as a probe kind, ``probe.kind = "lincls"``.

Unlike the other probes it does not read cached features: every epoch the frozen backbone (eval mode)
sees new RandomResizedCrop + flip views of the labelled images, and only a linear head trains: initialised
N(0, 0.01) with zero bias, SGD with momentum 0.9 and no weight decay, lr 0.1 x batch / 256 on a
per-epoch half-cosine, 30 epochs. Evaluation images go through un-augmented (at the suite's image size
the code's Resize(256) + CenterCrop(224) is the identity). The cost is that of 30 forward passes over the
labelled split, which is why the CPU presets keep the cached-feature probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.eval.features import extract_features
from benchsuite.ssl.augment import AugmentConfig, augment, to_float


def lincls_lr(base_lr: float, batch_size: int, epoch: int, epochs: int) -> float:
    """The code's schedule: ``base_lr x batch / 256``, halved along a cosine once per epoch."""
    return base_lr * batch_size / 256 * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def fit_lincls(encoder: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int, cfg, seed: int,
               device: torch.device | str = "cpu",
               norm: AugmentConfig | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Train the head on augmented views of ``images`` (uint8 (N, H, W, 3)) through the frozen ``encoder``;
    returns ``predict(images) -> classes``. ``cfg`` is a :class:`benchsuite.eval.probe.ProbeConfig`."""
    device = torch.device(device)
    norm = norm or AugmentConfig()
    views = AugmentConfig(crop_scale=tuple(cfg.lincls_crop_scale), flip_prob=0.5, jitter_prob=0.0, gray_prob=0.0,
                          blur_prob=0.0, mean=tuple(norm.mean), std=tuple(norm.std))
    encoder = encoder.eval().to(device).requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(images))
    y = torch.from_numpy(np.asarray(labels)).long()
    with torch.inference_mode():
        dim = encoder(augment(to_float(data[:2]).to(device), views, gen)).shape[1]
    head = nn.Linear(dim, num_classes).to(device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lincls_lr, momentum=0.9, weight_decay=0.0)
    for epoch in range(cfg.lincls_epochs):
        for group in opt.param_groups:
            group["lr"] = lincls_lr(cfg.lincls_lr, cfg.lincls_batch_size, epoch, cfg.lincls_epochs)
        for batch in torch.randperm(len(data), generator=gen).split(cfg.lincls_batch_size):
            x = augment(to_float(data[batch]).to(device), views, gen)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                feats = encoder(x).float()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(head(feats), y[batch].to(device)).backward()
            opt.step()
    head.eval()

    @torch.inference_mode()
    def predict(query: np.ndarray) -> np.ndarray:
        feats = extract_features(encoder, np.asarray(query), device=device, augment_cfg=norm)
        return head(torch.from_numpy(feats).to(device)).argmax(1).cpu().numpy()

    return predict
