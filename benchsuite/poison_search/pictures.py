"""Pictures of a filter defense's work: the retrieved candidate patches and a few attention maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def heat_colours(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map: values in [0, 1] -> uint8 RGB."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def _tile(tiles: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (h + gap) + gap, min(columns, len(tiles)) * (w + gap) + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[gap + r * (h + gap):gap + r * (h + gap) + h, gap + c * (w + gap):gap + c * (w + gap) + w] = tile
    return sheet


def save_patch_grid(patches: np.ndarray, path: Path, scale: int = 4, columns: int = 10) -> Path | None:
    """All ``patches`` (k, w, w, 3) uint8, enlarged ``scale`` times, on one PNG sheet; None when there are none."""
    if len(patches) == 0:
        return None
    tiles = [np.kron(p, np.ones((scale, scale, 1), np.uint8)) for p in patches]
    Image.fromarray(_tile(tiles, columns)).save(path)
    return path


def save_attention_maps(images: np.ndarray, maps: np.ndarray, windows: np.ndarray, path: Path,
                        scale: int = 4) -> Path | None:
    """One row per image: the image with its candidate window (red box), then the map over it."""
    if len(images) == 0:
        return None
    tiles = []
    for img, att, (x, y, w, h) in zip(images, maps, windows, strict=True):
        span = float(att.max() - att.min())
        heat = heat_colours((att - att.min()) / span if span > 0 else np.zeros_like(att))
        overlay = (0.45 * img + 0.55 * heat).astype(np.uint8)
        for picture in (img, overlay):
            big = Image.fromarray(np.kron(picture, np.ones((scale, scale, 1), np.uint8)))
            ImageDraw.Draw(big).rectangle([x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1],
                                          outline=(255, 0, 0), width=max(1, scale // 2))
            tiles.append(np.asarray(big))
    Image.fromarray(_tile(tiles, 2)).save(path)
    return path


def save_attention_arrays(indices: np.ndarray, maps: np.ndarray, windows: np.ndarray, path: Path) -> Path | None:
    """The pictured images' indices, attention maps (n, H, W) and windows (n, 4) as an .npz; None when empty."""
    if len(indices) == 0:
        return None
    np.savez_compressed(path, indices=np.asarray(indices, np.int64), maps=np.asarray(maps, np.float32),
                        windows=np.asarray(windows, np.int64))
    return path
