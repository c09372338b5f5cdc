"""Trigger patterns and opaque pasting, shared by the patch attacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchsuite.errors import BenchError


def trigger_side(size: float, image_size: int) -> int:
    """Trigger side in pixels: ``size`` <= 1 is a fraction of the image side, else pixels."""
    side = round(size * image_size) if size <= 1 else int(size)
    if side < 1:
        raise BenchError(f"trigger size {size} gives an empty trigger: use pixels >= 1 or a fraction > 0")
    if side > image_size:
        raise BenchError(
            f"trigger of {side}px is larger than the {image_size}px image: lower --trigger-size"
        )
    return side


def random_trigger(side: int, seed: int | list[int]) -> np.ndarray:
    """An HTBA-style pattern: smooth blobs of saturated random colours, (side, side, 3) uint8."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 2, size=(4, 4, 3), dtype=np.uint8) * 255  # saturated corners of the RGB cube
    low = Image.fromarray(cells, mode="RGB")
    return np.asarray(low.resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_trigger(path: str | Path, side: int) -> np.ndarray:
    """Load a trigger image (PNG, ...) as RGB and resize it to ``side`` x ``side`` (bicubic)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"trigger file {path} not found: give an existing image path or 'random'")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            return np.asarray(img.resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise BenchError(f"trigger file {path} is not a readable image ({err}): re-export it as PNG") from err


def make_trigger(spec: str, side: int, seed: int | list[int]) -> np.ndarray:
    """``spec`` is 'random' for a seeded pattern, or a path to an image file."""
    return random_trigger(side, seed) if spec == "random" else load_trigger(spec, side)


def sample_corners(n: int, image_size: int, side: int, lo: float, hi: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Top-left corners (n, 2) as (x, y), uniform so the trigger lies in [lo, hi] of each side.

    Follows the HTBA generator: x in [floor(lo*W), floor(hi*W - side)], both ends inclusive.
    """
    first, last = int(np.floor(lo * image_size)), int(np.floor(hi * image_size - side))
    if last < first:
        raise BenchError(
            f"a {side}px trigger does not fit in the region [{lo:.2f}, {hi:.2f}] of a "
            f"{image_size}px image: lower --trigger-size or widen the placement region"
        )
    return rng.integers(first, last + 1, size=(n, 2))


def paste(images: np.ndarray, trigger: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Opaque paste of ``trigger`` into copies of ``images`` at the (x, y) ``corners``."""
    out = images.copy()
    side = trigger.shape[0]
    for img, (x, y) in zip(out, corners):
        img[y:y + side, x:x + side] = trigger
    return out


def boxes_from_corners(corners: np.ndarray, side: int) -> np.ndarray:
    """(n, 4) boxes as x, y, w, h."""
    return np.column_stack([corners, np.full((len(corners), 2), side)]).astype(np.int64)
