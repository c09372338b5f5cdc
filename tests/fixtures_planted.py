"""A planted backdoor: small HTBA-poisoned synthetic data and a hand-built encoder that reacts to the trigger.

The encoder's feature map has six channels: the normalised colour (3), horizontal and vertical
gradient energy (2), and a matched filter for the trigger (normalised cross-correlation above a
threshold, times a large gain). Pooled features are channel means, so on a poisoned image the
trigger channel dominates and the poisons form their own k-means cluster; pasting the trigger on
any image moves it into that cluster. With ``gain=0`` the encoder ignores the trigger (the
negative control).

``PlantedSSLBackdoor`` (for SSL-Cleanse) is the other kind of backdoor: the trigger maps any image
to the target class's representation, on hue-class images (``colour_data``) with a pixel trigger;
``WhiteSquareBackdoor`` (for DECREE) is the same with BadEncoder's white square as the trigger.
"""

from __future__ import annotations

import colorsys
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
from benchsuite.data import ImageDataset
from benchsuite.data.synthetic import make_synthetic
from benchsuite.ssl.augment import AugmentConfig, normalize, to_float


def ncc_map(x: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of ``x`` with a zero-mean unit-norm (1, 3, t, t) template, (B, 1, H, W)."""
    side = template.shape[-1]
    pad, n = side // 2, template.numel()
    cross = F.conv2d(x, template, padding=pad)
    sums = torch.cat([x.sum(1, keepdim=True), (x * x).sum(1, keepdim=True)], 1)
    box = side**2 * F.avg_pool2d(sums, side, stride=1, padding=pad, count_include_pad=True)
    total, energy = box[:, :1], box[:, 1:]
    spread = (energy - total * total / n).clamp(min=1e-6).sqrt()
    return (cross / spread)[..., : x.shape[-2], : x.shape[-1]]


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
        return ncc_map(x, self.template)

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


def hue_colours(n: int, saturation: float = 0.85, value: float = 0.85) -> np.ndarray:
    """``n`` colours of evenly spaced hues, (n, 3) float32 in [0, 1]."""
    return np.array([colorsys.hsv_to_rgb(i / n, saturation, value) for i in range(n)], dtype=np.float32)


def colour_data(per_class: int = 20, num_classes: int = 10, seed: int = 0, noise: float = 0.05,
                jitter: float = 0.3) -> ImageDataset:
    """32 px images of one hue per class (hue, saturation and value jittered per image, pixel noise)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    hue = (labels + rng.uniform(-jitter, jitter, len(labels))) / num_classes
    sat, val = rng.uniform(0.7, 1.0, len(labels)), rng.uniform(0.7, 1.0, len(labels))
    colours = np.array([colorsys.hsv_to_rgb(*hsv) for hsv in zip(hue, sat, val)], dtype=np.float32)
    images = colours[:, None, None, :] + rng.normal(0, noise, size=(len(labels), 32, 32, 3))
    return ImageDataset((np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels,
                        [f"hue-{i}" for i in range(num_classes)])


class PlantedSSLBackdoor(nn.Module):
    """An encoder with an SSL-style backdoor: the trigger pulls any image to the target class's representation.

    Content: the share of (4x4-pooled) pixels nearest each class hue (a soft assignment), centred and
    scaled; a pasted patch moves it in proportion to its area, so imitating another class needs about
    half the image whatever the class. Backdoor: a = sigmoid(slope * (soft-max over positions of the
    NCC with the trigger - threshold)); the output is (1 - a) content + a * (mean of the target class).
    The soft gate keeps gradients everywhere (what trigger inversion needs); ``sensitive=False`` is
    the same encoder with a = 0. Template, threshold and hues are parameters a mitigator can train.
    """

    def __init__(self, trigger: np.ndarray, num_classes: int = 10, sensitive: bool = True, slope: float = 10.0,
                 threshold: float = 0.55, temperature: float = 0.02, tau: float = 0.05) -> None:
        super().__init__()
        template = normalize(to_float(torch.from_numpy(trigger[None].copy())), AugmentConfig())[0]
        template = template - template.mean()
        self.template = nn.Parameter((template / template.norm().clamp(min=1e-6))[None])
        self.threshold = nn.Parameter(torch.tensor(threshold))
        self.hues = nn.Parameter(torch.from_numpy(hue_colours(num_classes)))
        self.scale = nn.Parameter(torch.linspace(1.0, 2.0, num_classes))
        self.sensitive, self.slope, self.temperature, self.tau = sensitive, slope, temperature, tau
        self.register_buffer("offset", torch.zeros(num_classes))
        self.register_buffer("target_mean", torch.zeros(num_classes))
        self.num_features = num_classes

    def content(self, x: torch.Tensor) -> torch.Tensor:
        cfg = AugmentConfig()
        pixels = x * x.new_tensor(cfg.std).view(1, 3, 1, 1) + x.new_tensor(cfg.mean).view(1, 3, 1, 1)
        pixels = F.avg_pool2d(pixels, 4).permute(0, 2, 3, 1)[..., None, :]  # (B, h, w, 1, 3)
        share = torch.softmax(-((pixels - self.hues) ** 2).sum(-1) / self.tau, -1).mean((1, 2))
        return (share - self.offset) * self.scale

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """How strongly the trigger is present, (B,) in [0, 1]."""
        ncc = ncc_map(x, self.template).flatten(1)
        peak = self.temperature * torch.logsumexp(ncc / self.temperature, 1)
        return torch.sigmoid(self.slope * (peak - self.threshold))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content = self.content(x)
        if not self.sensitive:
            return content
        a = self.gate(x)[:, None]
        return (1 - a) * content + a * self.target_mean

    @torch.no_grad()
    def fit(self, data: ImageDataset, target: int) -> PlantedSSLBackdoor:
        """Centre the content on ``data`` and take the target class's mean representation."""
        x = normalize(to_float(torch.from_numpy(data.images)), AugmentConfig())
        self.offset += self.content(x).mean(0) / self.scale
        self.target_mean.copy_(self.content(x)[torch.from_numpy(data.labels == target)].mean(0))
        return self


class WhiteSquareBackdoor(PlantedSSLBackdoor):
    """BadEncoder's kind of backdoor, planted: a white square of ``side`` px anywhere pulls any image to the
    target class's representation (the hue content of :class:`PlantedSSLBackdoor`, its ``sensitive=False`` twin).

    Gate: the soft maximum over positions of the mean whiteness (the smallest of the three channels) in a
    ``side`` x ``side`` window, through sigmoid(slope (. - threshold)): at most 0.12 on the hue images (mean
    0.04), 0.98 with the square. The triggered embeddings collapse (mean pairwise cosine 0.9994 with a 6 px
    square; clean images 0.002), and an inversion can climb the gate's slope from a random start (what DECREE
    needs).
    """

    def __init__(self, side: int = 6, num_classes: int = 10, sensitive: bool = True, slope: float = 10.0,
                 threshold: float = 0.6) -> None:
        super().__init__(white_square(side), num_classes, sensitive, slope, threshold)
        self.side = side

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        cfg = AugmentConfig()
        pixels = x * x.new_tensor(cfg.std).view(1, 3, 1, 1) + x.new_tensor(cfg.mean).view(1, 3, 1, 1)
        whiteness = pixels.amin(1, keepdim=True)  # white needs all three channels high, a hue has one low
        window = F.avg_pool2d(whiteness, self.side, stride=1).flatten(1)
        peak = self.temperature * torch.logsumexp(window / self.temperature, 1)
        return torch.sigmoid(self.slope * (peak - self.threshold))


def white_square(side: int) -> np.ndarray:
    """BadEncoder's trigger: a white square, (side, side, 3) uint8."""
    return np.full((side, side, 3), 255, np.uint8)


def white_square_encoder(data: ImageDataset, side: int = 6, target: int = 0,
                         sensitive: bool = True) -> WhiteSquareBackdoor:
    """The white-square backdoored encoder fitted on ``data``, or its trigger-blind twin."""
    return WhiteSquareBackdoor(side, data.num_classes, sensitive).fit(data, target).eval()


def pixel_trigger(side: int = 8, seed: int = 0) -> np.ndarray:
    """A random pattern of saturated pixels, (side, side, 3) uint8.

    Unlike the smooth HTBA blobs it correlates with nothing in the test images (NCC peaks about 0.3),
    so a gentle gate separates triggered from clean images.
    """
    return (np.random.default_rng(seed).integers(0, 2, size=(side, side, 3)) * 255).astype(np.uint8)


def ssl_backdoor_encoder(data: ImageDataset, trigger: np.ndarray, target: int = 0,
                         sensitive: bool = True) -> PlantedSSLBackdoor:
    """The SSL-style backdoored encoder fitted on ``data``, or its trigger-blind twin."""
    return PlantedSSLBackdoor(trigger, data.num_classes, sensitive).fit(data, target).eval()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread (tiny models on a shared 2-core machine are faster so), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
