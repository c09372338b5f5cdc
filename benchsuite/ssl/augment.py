"""SSL augmentations as batched tensor ops (one call per batch, no per-image PIL work).

RandomResizedCrop (torchvision's box sampling) + horizontal flip is one ``grid_sample`` with a per-image grid;
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

from benchsuite.core.cache import added_field
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Unit

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
CROP_TRIES = 10  # torchvision's RandomResizedCrop.get_params: 10 boxes, then a centre crop


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)  # MoCo-v2 / SimCLR: RRC(scale=(0.2, 1))
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: Unit = 0.5
    jitter_prob: Unit = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_prob: Unit = 0.2
    blur_prob: Unit = 0.0  # 0.5 in MoCo-v2 aug+ at 224 px; usually off at 32 px
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: Unit = added_field(0.0)  # MoCo-v3 / BYOL: 0.2 on the second view
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # the crop algorithm, a keyed field: encoders cached with the earlier crop (sides clipped to the
    # image, no integer boxes) have no such field, so their cache keys differ
    crop_impl: str = "torchvision"

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise BenchError(f"{name} = ({lo}, {hi}) needs 0 < min <= max: fix the augmentation's {name}")
        if self.crop_impl != "torchvision":
            raise BenchError(f"crop_impl = {self.crop_impl!r} is not known: use \"torchvision\"")


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


def _rand_all(x: torch.Tensor, gen: torch.Generator, shard: Shard | None, *shape: int) -> torch.Tensor:
    """Uniform numbers for each image of the global batch: shape (total, *shape)."""
    total = x.shape[0] if shard is None else shard[1]
    return torch.rand(total, *shape, generator=gen, device=x.device)


def _mine(values: torch.Tensor, x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
    return values if shard is None else values[shard[0]:shard[0] + x.shape[0]]


def _rand(x: torch.Tensor, gen: torch.Generator, shard: Shard | None) -> torch.Tensor:
    """One uniform number per image of ``x``."""
    return _mine(_rand_all(x, gen, shard), x, shard)


def _uniform(x: torch.Tensor, lo: float, hi: float, gen: torch.Generator, shard: Shard | None) -> torch.Tensor:
    return _rand(x, gen, shard) * (hi - lo) + lo


def _wide(device: torch.device) -> torch.dtype:
    """float64 for box arithmetic (sides rounded as torchvision's Python floats), but MPS has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's box when no try fits: the whole image, or its centre at the nearest allowed ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def crop_boxes(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
               shard: Shard | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer boxes (top, left, height, width) per image, drawn as torchvision's RandomResizedCrop.get_params.

    Each image gets CROP_TRIES candidates (area ~ U(scale) x image area, log-uniform aspect, sides
    rounded to pixels) and keeps the first that fits in the image, at a uniform integer offset;
    without one it takes the centre fallback. Same distribution as torchvision's loop, not its numbers.
    """
    height, width = x.shape[-2:]
    wide = _wide(x.device)
    lo, hi = cfg.crop_scale
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    target = (_rand_all(x, gen, shard, CROP_TRIES).to(wide) * (hi - lo) + lo) * (height * width)
    ratio = torch.exp(_rand_all(x, gen, shard, CROP_TRIES).to(wide) * (log_hi - log_lo) + log_lo)
    w = torch.round(torch.sqrt(target * ratio))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(target / ratio))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)  # the first fitting try (0 when none fits)
    fit = fits.any(1)
    fh, fw = _fallback_box(height, width, cfg.crop_ratio)
    h = torch.where(fit, h.gather(1, first)[:, 0], float(fh))
    w = torch.where(fit, w.gather(1, first)[:, 0], float(fw))
    # randint(0, n - side + 1) as floor(u * (n - side + 1)); the fallback is centred
    top = torch.minimum(torch.floor(_rand_all(x, gen, shard).to(wide) * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(_rand_all(x, gen, shard).to(wide) * (width - w + 1)), width - w)
    top = torch.where(fit, top, float((height - fh) // 2))
    left = torch.where(fit, left, float((width - fw) // 2))
    return (_mine(top.long(), x, shard), _mine(left.long(), x, shard),
            _mine(h.long(), x, shard), _mine(w.long(), x, shard))


def _sample_points(start: torch.Tensor, side: torch.Tensor, size: int, out: int, dtype: torch.dtype) -> torch.Tensor:
    """grid_sample coordinates (align_corners=False) of ``out`` pixels resized from ``[start, start+side)``.

    Output pixel k reads input position start + (k + 0.5) side / out - 0.5 (pixel centres), kept
    inside the box as interpolate's edge clamping does, so a whole-image box is the identity.
    """
    wide = _wide(start.device)
    k = torch.arange(out, device=start.device, dtype=wide) + 0.5
    start, side = start.to(wide)[:, None], side.to(wide)[:, None]
    pos = torch.minimum(torch.maximum(start + k * side / out - 0.5, start), start + side - 1)
    return ((2 * pos + 1) / size - 1).to(dtype)


def random_resized_crop(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                        shard: Shard | None = None) -> torch.Tensor:
    """torchvision's RandomResizedCrop to the input size, then a horizontal flip with flip_prob.

    The box (see :func:`crop_boxes`) is resampled bilinearly like torchvision's crop + resize. The
    output has the input's size, so a box is only ever enlarged and antialiasing never applies.
    """
    n, _, height, width = x.shape
    top, left, h, w = crop_boxes(x, cfg, gen, shard)
    flip = (_rand(x, gen, shard) < cfg.flip_prob)[:, None]
    gx = _sample_points(left, w, width, width, x.dtype)
    gx = torch.where(flip, gx.flip(1), gx)
    gy = _sample_points(top, h, height, height, x.dtype)
    grid = torch.stack([gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
