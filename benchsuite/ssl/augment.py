"""SSL augmentations as batched tensor ops (one call per batch, no per-image PIL work).

RandomResizedCrop + horizontal flip is one ``grid_sample`` with a per-image affine grid;
colour jitter, grayscale and blur act on the whole batch with per-image random factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def random_resized_crop(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Crop a random area/aspect box per image, resize to the input size, maybe flip."""
    n, dev = x.shape[0], x.device
    area = _uniform(n, *cfg.crop_scale, gen, dev)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, dev)
    ratio = torch.exp(log_ratio)
    # box sides as fractions of the image side, clipped to the image (torchvision falls back alike)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen, device=dev) * (1 - w) + w / 2) * 2 - 1
    cy = (torch.rand(n, generator=gen, device=dev) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(torch.rand(n, generator=gen, device=dev) < cfg.flip_prob, -1.0, 1.0)
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


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with per-image factors, applied with jitter_prob."""
    n, dev = x.shape[0], x.device
    apply = (torch.rand(n, generator=gen, device=dev) < cfg.jitter_prob).view(-1, 1, 1, 1)
    b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, dev).view(-1, 1, 1, 1)
    c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, dev).view(-1, 1, 1, 1)
    s = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen, dev).view(-1, 1, 1, 1)
    h = _uniform(n, -cfg.hue, cfg.hue, gen, dev)
    y = (x * b).clamp(0, 1)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * s + gray).clamp(0, 1)
    if cfg.hue > 0:
        y = _hue_shift(y, h).clamp(0, 1)
    return torch.where(apply, y, x)


def random_grayscale(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    apply = (torch.rand(x.shape[0], generator=gen, device=x.device) < cfg.gray_prob).view(-1, 1, 1, 1)
    return torch.where(apply, _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, as one grouped convolution."""
    n, _, hgt, _ = x.shape
    apply = (torch.rand(n, generator=gen, device=x.device) < cfg.blur_prob).view(-1, 1, 1, 1)
    sigma = _uniform(n, *cfg.blur_sigma, gen, x.device) * hgt / 224  # sigma is given at 224 px
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).clamp(min=1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (3n, k)
    flat = x.reshape(1, n * 3, *x.shape[2:])
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * 3, 1, 1, -1), groups=n * 3)
    flat = F.conv2d(flat, kernel.view(n * 3, 1, -1, 1), groups=n * 3)
    return torch.where(apply, flat.view_as(x), x)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random view of a float [0, 1] batch, normalised for the encoder."""
    x = random_resized_crop(x, cfg, gen)
    x = color_jitter(x, cfg, gen)
    x = random_grayscale(x, cfg, gen)
    if cfg.blur_prob > 0:
        x = gaussian_blur(x, cfg, gen)
    return normalize(x, cfg)
