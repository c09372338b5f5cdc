"""Frozen-encoder features."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchsuite.ssl.augment import AugmentConfig, normalize, to_float


@torch.inference_mode()
def extract_features(encoder: nn.Module, images: np.ndarray, batch_size: int = 512,
                     device: torch.device | str = "cpu",
                     augment_cfg: AugmentConfig | None = None) -> np.ndarray:
    """Pooled features (N, D) float32 of uint8 images (N, H, W, 3), encoder in eval mode."""
    device = torch.device(device)
    cfg = augment_cfg or AugmentConfig()
    encoder.eval().to(device)
    if device.type == "cuda":
        encoder.to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_float(torch.from_numpy(images[start:start + batch_size]).to(device)), cfg)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(encoder(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
