"""The embedded default dataset: procedurally generated texture classes, no download.

Ten classes = five pattern families (horizontal stripes, vertical stripes, checkerboard,
concentric rings, dot grid) x two spatial frequencies. Every family is invariant to a
horizontal flip, so the standard SSL augmentations keep the class. Each image has its own
random two-colour palette, phase, frequency jitter and pixel noise, so colour alone does
not tell the class.
"""

from __future__ import annotations

import numpy as np

from benchsuite.api.data import ImageDataset, Splits

FAMILIES = ("hstripes", "vstripes", "checker", "rings", "dots")
PERIODS = (12.0, 4.5)  # pixels per cycle at 32 px, scaled with the image side
CLASS_NAMES = [f"{family}-{'coarse' if p == 0 else 'fine'}" for p in range(2) for family in FAMILIES]


def _pattern(family: str, xx: np.ndarray, yy: np.ndarray, freq: np.ndarray, phase: np.ndarray,
             centre: np.ndarray) -> np.ndarray:
    """Values in [0, 1] of one pattern family for a batch; freq/phase/centre are per image."""
    f = freq[:, None, None]
    if family == "hstripes":
        v = np.sin(2 * np.pi * f * yy + phase[:, None, None])
    elif family == "vstripes":
        v = np.sin(2 * np.pi * f * xx + phase[:, None, None])
    elif family == "checker":
        v = np.sin(2 * np.pi * f * xx + phase[:, None, None]) * np.sin(2 * np.pi * f * yy)
    elif family == "rings":
        r = np.hypot(xx - centre[:, 0, None, None], yy - centre[:, 1, None, None])
        v = np.sin(2 * np.pi * f * r + phase[:, None, None])
    else:  # dots
        v = np.cos(2 * np.pi * f * xx + phase[:, None, None]) + np.cos(2 * np.pi * f * yy)
        v = np.tanh(3 * (v - 1.0))
    return np.clip(0.5 + 0.5 * np.tanh(2.5 * v), 0.0, 1.0)


def generate_images(labels: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Render one image per label; deterministic for the generator's state."""
    n = len(labels)
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    freq_jitter = rng.uniform(0.85, 1.15, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    centre = rng.uniform(0.2 * image_size, 0.8 * image_size, size=(n, 2))
    palette = rng.uniform(0, 255, size=(n, 2, 3)).astype(np.float32)
    # keep the two colours apart so the pattern stays visible
    too_close = np.linalg.norm(palette[:, 0] - palette[:, 1], axis=1) < 120
    palette[too_close, 1] = 255 - palette[too_close, 0]
    noise = rng.normal(0, 10, size=out.shape).astype(np.float32)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        family = FAMILIES[label % len(FAMILIES)]
        period = PERIODS[label // len(FAMILIES)] * image_size / 32
        freq = freq_jitter[rows] / period
        v = _pattern(family, xx, yy, freq, phase[rows], centre[rows])[..., None]
        img = v * palette[rows, 0, None, None, :] + (1 - v) * palette[rows, 1, None, None, :]
        out[rows] = np.clip(img + noise[rows], 0, 255).astype(np.uint8)
    return out


def make_synthetic(num_train_per_class: int = 500, num_val_per_class: int = 100,
                   image_size: int = 32, seed: int = 0, num_classes: int = 10) -> Splits:
    """Generate the embedded default dataset (balanced, shuffled, deterministic for ``seed``)."""
    num_classes = min(num_classes, len(CLASS_NAMES))
    rng = np.random.default_rng(seed)
    splits = []
    for per_class in (num_train_per_class, num_val_per_class):
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
        splits.append(ImageDataset(generate_images(labels, image_size, rng), labels,
                                   CLASS_NAMES[:num_classes]))
    return Splits(train=splits[0], val=splits[1])
