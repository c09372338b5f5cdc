"""The random-trigger control of an ASR: an unrelated pattern pasted where the attack put its trigger.

A probe may send patched images to the target class for reasons other than the backdoor (any patch in that
corner, a class the probe favours on occluded images). The same images carrying a seeded random pattern of the
same size at the same boxes measure that share; an ASR is a backdoor's only as far as it exceeds it.
"""

from __future__ import annotations

import numpy as np

from benchsuite.triggers import random_trigger


def control_images(clean: np.ndarray, boxes: np.ndarray, seed: int | list[int]) -> np.ndarray | None:
    """``clean`` (N, H, W, 3) uint8 with one random pattern pasted at each row's (x, y, w, h) box; None when
    the boxes are not all real (a whole-image trigger such as CTRL's has no place to put a patch)."""
    if len(boxes) != len(clean) or len(boxes) == 0 or (boxes[:, 2:] <= 0).any():
        return None
    side = int(boxes[:, 2:].max())
    pattern = random_trigger(side, seed)
    out = clean.copy()
    height, width = clean.shape[1:3]
    for i, (x, y, w, h) in enumerate(boxes.astype(int)):
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        out[i, y0:y1, x0:x1] = pattern[y0 - y:y1 - y, x0 - x:x1 - x]
    return out
