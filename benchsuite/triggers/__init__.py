"""Trigger patterns and opaque pasting, shared by the patch attacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from benchsuite.core.errors import BenchError
from benchsuite.triggers.glyphs import GLYPHS, glyph_trigger

GENERATED = ("random", "glyph")  # trigger specs made in code, not read from a file


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
        raise BenchError(f"trigger file {path} not found: give an existing image path, 'random' or 'glyph'")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            return np.asarray(img.resize((side, side), Image.Resampling.BICUBIC), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise BenchError(f"trigger file {path} is not a readable image ({err}): re-export it as PNG") from err


def glyph_number(seed: int | list[int]) -> int:
    """The glyph of a seed ``[trigger_seed, target]``: ``(trigger_seed + target) mod`` the number of glyphs."""
    return int(np.sum(seed)) % len(GLYPHS)


def make_trigger(spec: str, side: int, seed: int | list[int]) -> np.ndarray:
    """``spec`` is 'random' for a seeded HTBA-style pattern, 'glyph' for the structured pattern
    :func:`glyph_number` of ``seed`` (benchsuite.triggers.glyphs), or a path to an image file."""
    if spec == "random":
        return random_trigger(side, seed)
    if spec == "glyph":
        return glyph_trigger(glyph_number(seed), side)
    return load_trigger(spec, side)


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


def native_sides(size: float, sizes: np.ndarray) -> np.ndarray:
    """Trigger sides in source pixels for (n, 2) source sizes: ``size`` > 1 is pixels, else a fraction
    of each image's shorter side."""
    sides = np.full(len(sizes), int(size)) if size > 1 else np.rint(size * sizes.min(axis=1)).astype(np.int64)
    if (sides < 1).any():
        raise BenchError(f"trigger size {size} gives an empty trigger: use pixels >= 1 or a larger fraction")
    return sides


def sample_native_corners(sizes: np.ndarray, sides: np.ndarray, lo: float, hi: float,
                          rng: np.random.Generator) -> np.ndarray:
    """HTBA's top-left corners (n, 2) in source images of (n, 2) sizes (width, height).

    x in [floor(lo*W), floor(hi*W - side)], the upper end raised to the lower one when the trigger
    does not fit (SSL-Backdoor's ``max := min``), so every image of a folder gets a trigger.
    """
    first = np.floor(lo * sizes).astype(np.int64)
    last = np.maximum(first, np.floor(hi * sizes - np.asarray(sides)[:, None]).astype(np.int64))
    return rng.integers(first, last + 1).reshape(len(sizes), 2)


def _stored_edge(v: float, scale: float, offset: float) -> int:
    return int(np.floor(v * scale - offset + 0.5))


def paste_native(images: np.ndarray, triggers: list[np.ndarray], corners: np.ndarray,
                 geometry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste each trigger as if into its source image at ``corners``, before the stored resize and crop.

    The box's edges go through the geometry rows (width, height, sx, sy, left, top; see ImageDataset)
    and round to stored pixels; the trigger is resized to the box with the loaders' bilinear filter
    and the part outside the centre crop is dropped. Returns the images and their stored (x, y, w, h)
    boxes, -1 rows where no trigger pixel is left after the crop.
    """
    out = images.copy()
    boxes = np.full((len(images), 4), -1, dtype=np.int64)
    height, width = images.shape[1:3]
    for i, (trigger, (x, y), row) in enumerate(zip(triggers, corners, geometry)):
        sx, sy, left, top = row[2:]
        side = len(trigger)
        x0, x1 = _stored_edge(x, sx, left), _stored_edge(x + side, sx, left)
        y0, y1 = _stored_edge(y, sy, top), _stored_edge(y + side, sy, top)
        cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, width), max(y0, 0), min(y1, height)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        patch = np.asarray(Image.fromarray(trigger).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
        out[i, cy0:cy1, cx0:cx1] = patch[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        boxes[i] = (cx0, cy0, cx1 - cx0, cy1 - cy0)
    return out, boxes
