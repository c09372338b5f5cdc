"""Square windows: their size, the best window of a heat map, cropping, pasting, IoU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchsuite.core.errors import BenchError


def window_side(window: float, image_size: int) -> int:
    """Window side in pixels: ``window`` > 1 is pixels, <= 1 a fraction of the image side."""
    side = int(window) if window > 1 else round(window * image_size)
    if side < 1:
        raise BenchError(f"window {window} gives an empty window: use pixels >= 1 or a fraction > 0")
    if side > image_size:
        raise BenchError(f"window of {side}px is larger than the {image_size}px images: lower the window option")
    return side


def best_windows(maps: torch.Tensor, side: int) -> np.ndarray:
    """(n, 4) x, y, w, h of the ``side`` x ``side`` window with the largest sum of each (n, H, W) map.

    Window sums are a box filter (avg_pool2d, valid positions); ties go to the first window in
    row-major order, as PatchSearch's ones-kernel convolution + argmax.
    """
    n, height, width = maps.shape
    if side > min(height, width):
        raise BenchError(f"window of {side}px is larger than the {height}x{width} map: lower the window option")
    sums = F.avg_pool2d(maps[:, None].float(), side, stride=1)[:, 0]  # (n, H-side+1, W-side+1)
    cols = sums.shape[-1]
    flat = sums.reshape(n, -1).argmax(1).cpu().numpy()
    return np.column_stack([flat % cols, flat // cols, np.full(n, side), np.full(n, side)]).astype(np.int64)


def crop_windows(images: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(n, w, w, 3) crops of uint8 ``images`` at square ``windows`` of one common side."""
    side = int(windows[0, 2]) if len(windows) else 0
    out = np.empty((len(images), side, side, images.shape[-1]), dtype=images.dtype)
    for i, (img, (x, y, _, _)) in enumerate(zip(images, windows, strict=True)):
        out[i] = img[y:y + side, x:x + side]
    return out


def paste_patches(canvas: torch.Tensor, patches: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Opaque paste, in place, of ``patches`` (n, C, w, w) into ``canvas`` (n, C, H, W) at (x, y) ``corners``.

    One vectorised scatter: no per-image Python loop.
    """
    n, side = patches.shape[0], patches.shape[-1]
    offsets = torch.arange(side, device=canvas.device)
    rows = (corners[:, 1, None] + offsets)[:, :, None]  # (n, w, 1)
    cols = (corners[:, 0, None] + offsets)[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=canvas.device)[:, None, None]
    hwc = canvas.permute(0, 2, 3, 1)  # a view: writing into it writes into canvas
    hwc[batch, rows, cols] = patches.permute(0, 2, 3, 1).to(canvas.dtype)
    return canvas
