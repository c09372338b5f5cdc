"""A reversed trigger as a small RGBA PNG (alpha = mask), base64 for the JSON verdict of any detector.

The verdict is all the mitigator gets, so the trigger travels inside it; 8 bits per value is
plenty for a blend mask, and pixels under a zero mask are blanked so the PNG stays small.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from benchsuite.core.errors import BenchError


def trigger_to_rgba(mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """(H, W) mask and (3, H, W) pattern in [0, 1] -> (H, W, 4) uint8 with the mask as alpha."""
    alpha = np.rint(np.clip(mask, 0, 1) * 255).astype(np.uint8)
    rgb = np.rint(np.clip(pattern, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    rgb[alpha == 0] = 0
    return np.dstack([rgb, alpha])


def encode_trigger(mask: np.ndarray, pattern: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(trigger_to_rgba(mask, pattern), mode="RGBA").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_trigger(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Base64 RGBA PNG -> (H, W) mask and (3, H, W) pattern as float32 in [0, 1]."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(text))) as img:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255
    except (ValueError, OSError) as err:
        raise BenchError(f"the verdict's reversed trigger is not a readable PNG ({err}): rerun the detection") from err
    return rgba[..., 3], rgba[..., :3].transpose(2, 0, 1).copy()
