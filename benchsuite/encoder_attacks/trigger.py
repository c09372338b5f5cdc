"""Model-attack triggers: a mask and a pattern pasted with replace semantics, ``x * (1 - m) + t * m``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchsuite.core.errors import BenchError

PAPER_SIDES = {32: 10, 224: 50}  # BadEncoder: 10 x 10 at 32 px, 50 x 50 at 224 px


@dataclass(frozen=True)
class Trigger:
    """A trigger: ``mask`` (H, W) float in [0, 1] and ``pattern`` (H, W, 3) uint8, and its bounding box."""

    mask: np.ndarray
    pattern: np.ndarray

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x, y, w, h of the mask's support."""
        rows, cols = np.nonzero(self.mask > 0)
        if not len(rows):
            return (-1, -1, -1, -1)
        return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)

    def paste(self, images: np.ndarray) -> np.ndarray:
        """The triggered copies of (N, H, W, 3) uint8 ``images``."""
        m = self.mask[None, :, :, None].astype(np.float32)
        out = images.astype(np.float32) * (1 - m) + self.pattern[None].astype(np.float32) * m
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def paste_float(self, x: torch.Tensor) -> torch.Tensor:
        """The same on a (B, 3, H, W) float batch in [0, 1], before normalisation."""
        m = torch.as_tensor(self.mask, dtype=x.dtype, device=x.device)[None, None]
        t = torch.as_tensor(self.pattern, device=x.device).permute(2, 0, 1)[None].to(x.dtype) / 255.0
        return x * (1 - m) + t * m

    def image(self) -> np.ndarray:
        """What the trigger looks like: the pattern where the mask is, mid-grey elsewhere (for pictures)."""
        grey = np.full_like(self.pattern, 128)
        return Trigger(self.mask, self.pattern).paste(grey[None])[0]


def paper_side(image_size: int) -> int:
    """BadEncoder's trigger side at ``image_size`` (10 at 32 px, 50 at 224 px, in proportion otherwise)."""
    return PAPER_SIDES.get(image_size, max(1, round(image_size * 10 / 32)))


def corner_square(image_size: int, side: int = 0, margin: int = 1, value: int = 255) -> Trigger:
    """A ``side`` x ``side`` square of ``value`` at the bottom right, ``margin`` pixels from the edges
    (BadEncoder: rows and columns 21-30 at 32 px)."""
    side = side or paper_side(image_size)
    if side < 1 or margin < 0 or side + margin > image_size:
        raise BenchError(f"a trigger of side {side} with margin {margin} does not fit a {image_size} px image: "
                         "lower trigger_side or trigger_margin")
    mask = np.zeros((image_size, image_size), dtype=np.float32)
    lo, hi = image_size - margin - side, image_size - margin
    mask[lo:hi, lo:hi] = 1.0
    pattern = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    pattern[lo:hi, lo:hi] = value
    return Trigger(mask, pattern)


def trigger_from_file(path: str | Path, image_size: int, side: int = 0, margin: int = 1) -> Trigger:
    """A trigger image (any size, resized to ``side``) pasted at the bottom right like the white square."""
    from PIL import Image

    file = Path(path).expanduser()
    if not file.is_file():
        raise BenchError(f"trigger file {file} not found: give an image file or trigger = \"white\"")
    side = side or paper_side(image_size)
    square = corner_square(image_size, side, margin)
    with Image.open(file) as img:
        patch = np.asarray(img.convert("RGB").resize((side, side), Image.BILINEAR), dtype=np.uint8)
    x, y, w, h = square.box
    pattern = np.zeros_like(square.pattern)
    pattern[y:y + h, x:x + w] = patch
    return Trigger(square.mask, pattern)


def random_square(image_size: int, side: int, seed: int, margin: int = 1) -> Trigger:
    """A square of random colours at the top left: a trigger the attack did not use (the control)."""
    rng = np.random.default_rng([seed, 7919])
    mask = np.zeros((image_size, image_size), dtype=np.float32)
    mask[margin:margin + side, margin:margin + side] = 1.0
    pattern = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    pattern[margin:margin + side, margin:margin + side] = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    return Trigger(mask, pattern)
