"""Batched encoder forwards for the search: uint8 images in, pooled features out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from benchsuite.core.cost import count_forwards
from benchsuite.ssl.augment import AugmentConfig, normalize, to_float


class EncoderRunner:
    """Runs an encoder in eval mode on ``device`` in large batches.

    On CUDA the inputs are channels_last and the forward runs under bf16 autocast, as in
    :func:`benchsuite.eval.features.extract_features`, so features match the ones clustered.
    """

    def __init__(self, encoder: nn.Module, device: torch.device | str = "cpu", batch_size: int = 512,
                 norm: AugmentConfig | None = None) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.norm = norm or AugmentConfig()
        self.encoder = encoder.eval().to(self.device)
        if self.cuda:
            self.encoder.to(memory_format=torch.channels_last)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def unit(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [0, 1] on the device."""
        return to_float(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))

    def prepare(self, x01: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] batch for the encoder (channels_last on CUDA).

        Every batch the search passes through the encoder comes through here (plain embeddings, masked
        copies, flip-test pastes, Grad-CAM), so this is where the stage's encoder forwards are counted.
        """
        count_forwards(len(x01))
        x = normalize(x01, self.norm)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def chunks(self, n: int, per_item: int = 1) -> Iterator[slice]:
        """Slices over ``n`` items so that each chunk holds about ``batch_size`` forwards."""
        step = max(1, self.batch_size // max(1, per_item))
        for start in range(0, n, step):
            yield slice(start, min(n, start + step))

    @torch.inference_mode()
    def embed(self, x01: torch.Tensor) -> np.ndarray:
        """Pooled features (n, D) float32 of a [0, 1] batch already on the device."""
        out = []
        for sl in self.chunks(len(x01)):
            with self.autocast():
                out.append(self.encoder(self.prepare(x01[sl])).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
