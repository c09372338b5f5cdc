"""A planted backdoor: small HTBA-poisoned synthetic data and a hand-built encoder that reacts to the trigger.

The encoder's feature map has six channels: the normalised colour (3), horizontal and vertical
gradient energy (2), and a matched filter for the trigger (normalised cross-correlation above a
threshold, times a large gain). Pooled features are channel means, so on a poisoned image the
trigger channel dominates and the poisons form their own k-means cluster; pasting the trigger on
any image moves it into that cluster. With ``gain=0`` the encoder ignores the trigger (the
negative control).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api import Poisoning
from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.data.synthetic import make_synthetic
from benchsuite.ssl.augment import AugmentConfig, normalize, to_float


class PlantedEncoder(nn.Module):
    """Random texture filters and a trigger detector; timm-like ``forward_features``/``forward_head``.

    ``channels`` fixed random 3x3 filters (+ ReLU) stand for image content; pooled features are
    centred (``fit``) so that content spreads around zero in many directions, as in a real encoder.
    The last channel is the trigger detector.
    """

    def __init__(self, trigger: np.ndarray, gain: float = 5000.0, threshold: float = 0.6, stride: int = 2,
                 channels: int = 16, seed: int = 0) -> None:
        super().__init__()
        template = normalize(to_float(torch.from_numpy(trigger[None].copy())), AugmentConfig())[0]
        template = template - template.mean()
        self.register_buffer("template", (template / template.norm().clamp(min=1e-6))[None])  # (1, 3, t, t)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("filters", torch.randn(channels, 3, 3, 3, generator=gen) / 12)
        self.register_buffer("offset", torch.zeros(channels + 1))
        self.gain, self.threshold, self.stride = gain, threshold, stride
        self.side = trigger.shape[0]
        self.num_features = channels + 1

    def trigger_map(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised cross-correlation with the trigger, (B, 1, H, W), 'same' padding."""
        pad, n = self.side // 2, self.template.numel()
        cross = F.conv2d(x, self.template, padding=pad)
        sums = torch.cat([x.sum(1, keepdim=True), (x * x).sum(1, keepdim=True)], 1)
        box = self.side**2 * F.avg_pool2d(sums, self.side, stride=1, padding=pad, count_include_pad=True)
        total, energy = box[:, :1], box[:, 1:]
        spread = (energy - total * total / n).clamp(min=1e-6).sqrt()
        return (cross / spread)[..., : x.shape[-2], : x.shape[-1]]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        content = F.relu(F.conv2d(x, self.filters, padding=1))
        trig = self.gain * F.relu(self.trigger_map(x) - self.threshold)
        return F.avg_pool2d(torch.cat([content, trig], 1), self.stride)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feats.mean((2, 3)) - self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def fit(self, images: np.ndarray) -> PlantedEncoder:
        """Centre the content features on ``images`` (the trigger channel keeps offset 0)."""
        x = normalize(to_float(torch.from_numpy(images)), AugmentConfig())
        mean = self.forward_features(x).mean((0, 2, 3))
        self.offset[:-1] = mean[:-1]
        return self


class PooledOnly(nn.Module):
    """An encoder without spatial features (no ``forward_features``): Grad-CAM cannot run on it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_features = inner.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@dataclass
class Planted:
    poisoning: Poisoning
    trigger: np.ndarray
    target: int

    @property
    def images(self) -> np.ndarray:
        return self.poisoning.train.images

    @property
    def num_classes(self) -> int:
        return self.poisoning.train.num_classes


@lru_cache(maxsize=4)
def planted_data(per_class: int = 40, rate: float = 1.0, num_classes: int = 10, target: int = 0,
                 seed: int = 0, trigger_size: int = 10) -> Planted:
    """Synthetic 32 px data with HTBA poisons (a ``trigger_size`` px trigger) on ``rate`` of the target class."""
    splits = make_synthetic(num_train_per_class=per_class, num_val_per_class=1, image_size=32, seed=seed,
                            num_classes=num_classes)
    attack = HTBA(HTBAConfig(trigger_size=trigger_size))
    poisoning = attack.poison(splits.train, [target], rate, seed)
    return Planted(poisoning, poisoning.triggers[target], target)


def planted_encoder(planted: Planted, sensitive: bool = True) -> PlantedEncoder:
    """The trigger-sensitive encoder, or with ``sensitive=False`` the same encoder blind to the trigger."""
    return PlantedEncoder(planted.trigger, gain=5000.0 if sensitive else 0.0).fit(planted.images).eval()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread (tiny models on a shared 2-core machine are faster so), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
