"""SSL augmentations as batched tensor ops (one call per batch, no per-image PIL work).

RandomResizedCrop + horizontal flip is one ``grid_sample`` with a per-image affine grid;
colour jitter, grayscale, blur and solarize act on the whole batch with per-image random factors.

``shard=(offset, total)`` says the batch is rows ``offset:offset+len(x)`` of a global batch of
``total`` images (one rank's share under torchrun): the random numbers are drawn for the global
batch and sliced, so N ranks augment exactly as one process would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchsuite.cache import added_field

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)  # MoCo-v2 / SimCLR: RRC(scale=(0.2, 1))
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_prob: float = 0.2
    blur_prob: float = 0.0  # 0.5 in MoCo-v2 aug+ at 224 px; usually off at 32 px
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = added_field(0.0)  # MoCo-v3 / BYOL: 0.2 on the second view
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 -> (B, 3, H, W) float in [0, 1]."""
    if images_uint8.shape[-1] == 3:
        images_uint8 = images_uint8.permute(0, 3, 1, 2)
    return images_uint8.float().div_(255.0)


def normalize(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    mean = x.new_tensor(cfg.mean).view(1, 3, 1, 1)
    std = x.new_tensor(cfg.std).view(1, 3, 1, 1)
    return (x - mean) / std


Shard = tuple[int, int]  # (offset, total): this batch's rows in a global batch


def _rand_all(x: torch.Tensor, gen: torch.Generator, shard: Shard | None) -> torch.Tensor:
    """One uniform number per image of the global batch."""
    total = x.shape[0] if shard is None else shard[1]
    return torch.rand(total, generator=gen, device=x.device)


def _mine(values: torch.Tensor, x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    return values if shard is None else values[shard[0]:shard[0] + x.shape[0]]


def _rand(x: torch.Tensor, gen: torch.Generator, shard: Shard | None) -> torch.Tensor:
    """One uniform number per image of ``x``."""
    return _mine(_rand_all(x, gen, shard), x, shard)


def _uniform(x: torch.Tensor, lo: float, hi: float, gen: torch.Generator, shard: Shard | None) -> torch.Tensor:
    return _rand(x, gen, shard) * (hi - lo) + lo


def random_resized_crop(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                        shard: Shard | None = None) -> torch.Tensor:
    """Crop a random area/aspect box per image, resize to the input size, maybe flip."""
    n, dev = x.shape[0], x.device
    area = _uniform(x, *cfg.crop_scale, gen, shard)
    log_ratio = _uniform(x, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, shard)
    ratio = torch.exp(log_ratio)
    # box sides as fractions of the image side, clipped to the image (torchvision falls back alike)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (_rand(x, gen, shard) * (1 - w) + w / 2) * 2 - 1
    cy = (_rand(x, gen, shard) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(_rand(x, gen, shard) < cfg.flip_prob, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by ``shift`` turns (a fast stand-in for HSV hue rotation)."""
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    to_rgb = torch.linalg.inv(to_yiq)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", to_rgb, yiq)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                 shard: Shard | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with per-image factors, applied with jitter_prob."""
    apply = (_rand(x, gen, shard) < cfg.jitter_prob).view(-1, 1, 1, 1)
    b = _uniform(x, 1 - cfg.brightness, 1 + cfg.brightness, gen, shard).view(-1, 1, 1, 1)
    c = _uniform(x, 1 - cfg.contrast, 1 + cfg.contrast, gen, shard).view(-1, 1, 1, 1)
    s = _uniform(x, 1 - cfg.saturation, 1 + cfg.saturation, gen, shard).view(-1, 1, 1, 1)
    h = _uniform(x, -cfg.hue, cfg.hue, gen, shard)
    y = (x * b).clamp(0, 1)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * s + gray).clamp(0, 1)
    if cfg.hue > 0:
        y = _hue_shift(y, h).clamp(0, 1)
    return torch.where(apply, y, x)


def random_grayscale(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                     shard: Shard | None = None) -> torch.Tensor:
    apply = (_rand(x, gen, shard) < cfg.gray_prob).view(-1, 1, 1, 1)
    return torch.where(apply, _gray(x).expand_as(x), x)


def solarize(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, shard: Shard | None = None) -> torch.Tensor:
    """Invert the pixels at or above 0.5, per image with solarize_prob (torchvision RandomSolarize)."""
    apply = (_rand(x, gen, shard) < cfg.solarize_prob).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1 - x, x)


def gaussian_blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                  shard: Shard | None = None) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, as one grouped convolution."""
    n, _, hgt, _ = x.shape
    apply = (_rand(x, gen, shard) < cfg.blur_prob).view(-1, 1, 1, 1)
    lo, hi = cfg.blur_sigma
    sigma_all = (_rand_all(x, gen, shard) * (hi - lo) + lo) * hgt / 224  # sigma is given at 224 px
    sigma = _mine(sigma_all, x, shard)
    # the kernel size follows the global batch's largest sigma, so every rank blurs alike
    radius = max(1, int(math.ceil(3 * float(sigma_all.max()))))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).clamp(min=1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (3n, k)
    flat = x.reshape(1, n * 3, *x.shape[2:])
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * 3, 1, 1, -1), groups=n * 3)
    flat = F.conv2d(flat, kernel.view(n * 3, 1, -1, 1), groups=n * 3)
    return torch.where(apply, flat.view_as(x), x)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, shard: Shard | None = None) -> torch.Tensor:
    """One random view of a float [0, 1] batch, normalised for the encoder."""
    x = random_resized_crop(x, cfg, gen, shard)
    x = color_jitter(x, cfg, gen, shard)
    x = random_grayscale(x, cfg, gen, shard)
    if cfg.blur_prob > 0:
        x = gaussian_blur(x, cfg, gen, shard)
    if cfg.solarize_prob > 0:
        x = solarize(x, cfg, gen, shard)
    return normalize(x, cfg)
