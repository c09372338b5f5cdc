"""Generated triggers that differ in structure (issue #14): oblique stripes, waves, letters, lattices.

HTBA's random trigger is an upsampled 4x4 grid of saturated colours; several of them in one
multi-target cell look alike, and like the coarse checkerboard of the embedded dataset. Each glyph
here has its own structure and colour pair, and avoids the embedded classes' orientations
(0/90 degrees, and 45 degrees at the checkerboards' periods) and radial rings. Order matters: any
three glyphs in a row (cyclically) are the most distinct from each other, so a cell of consecutive
targets gets distinct triggers. Glyphs keep their structure from about 12 px on; for smaller
triggers give PNGs (``trigger_dir``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u, v) in [-1, 1] -> foreground mask

STROKE = 0.14  # half-width of a letter stroke, in units of half the trigger side


def _rotate(u: np.ndarray, v: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.deg2rad(degrees)
    return u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)


def _stripes(degrees: float, period: float) -> Shape:
    return lambda u, v: np.sin(2 * np.pi * _rotate(u, v, degrees)[0] / period) > 0


def _strokes(points: list[tuple[float, float]], degrees: float = 0.0, width: float = STROKE) -> Shape:
    """A polyline through ``points`` drawn ``width`` thick, turned by ``degrees``."""
    segments = list(zip(points[:-1], points[1:]))

    def shape(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        u, v = _rotate(u, v, degrees)
        dist = np.full(u.shape, np.inf)
        for (ax, ay), (bx, by) in segments:
            dx, dy = bx - ax, by - ay
            t = np.clip(((u - ax) * dx + (v - ay) * dy) / (dx * dx + dy * dy), 0, 1)
            dist = np.minimum(dist, np.hypot(u - ax - t * dx, v - ay - t * dy))
        return dist < width

    return shape


def _wave(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u, v = _rotate(u, v, 15)
    return np.abs((v - 0.25 * np.sin(2 * np.pi * u)) % 0.6 - 0.3) < 0.1


def _chevrons(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * (v + np.abs(u)) / 0.7) > 0


def _lattice(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Triangles of two stripe families at +-60 degrees, turned by 30."""
    u, v = _rotate(u, v, 30)
    return np.sin(2 * np.pi * _rotate(u, v, 60)[0] / 0.7) * np.sin(2 * np.pi * _rotate(u, v, -60)[0] / 0.7) > 0


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    head = [(0.0, -0.7), (0.7, -0.7), (0.7, 0.0)]
    return _strokes([(-0.8, 0.8), (0.7, -0.7)], width=0.11)(u, v) | _strokes(head, width=0.11)(u, v)


# (name, shape, foreground RGB, background RGB); chosen by measuring, at 16 px, the phase-free (power
# spectrum) similarity to the embedded classes and between glyphs (tests/test_multi_target.py)
GLYPHS: list[tuple[str, Shape, tuple[int, int, int], tuple[int, int, int]]] = [
    ("diagonal stripes", _stripes(45, 0.6), (255, 255, 0), (0, 0, 160)),
    ("waves", _wave, (255, 255, 255), (200, 0, 0)),
    ("letter Z", _strokes([(-0.7, -0.7), (0.7, -0.7), (-0.7, 0.7), (0.7, 0.7)], 30), (0, 0, 0), (0, 255, 255)),
    ("stripes at 30 degrees", _stripes(30, 0.7), (0, 255, 0), (60, 0, 60)),
    ("chevrons", _chevrons, (255, 140, 0), (0, 0, 0)),
    ("letter N", _strokes([(-0.6, 0.8), (-0.6, -0.8), (0.6, 0.8), (0.6, -0.8)], 15), (255, 255, 255), (0, 120, 0)),
    ("arrow", _arrow, (255, 0, 0), (255, 255, 255)),
    ("triangle lattice", _lattice, (0, 255, 255), (128, 0, 128)),
    ("stripes at 120 degrees", _stripes(120, 0.7), (255, 255, 0), (0, 0, 0)),
    ("letter T", _strokes([(-0.75, -0.65), (0.75, -0.65), (0.0, -0.65), (0.0, 0.8)], 15, width=0.1), (0, 0, 0),
     (255, 160, 0)),
]


def glyph_mask(index: int, side: int, supersample: int = 4) -> np.ndarray:
    """Foreground coverage in [0, 1], (side, side), of glyph ``index`` (mod the number of glyphs)."""
    shape = GLYPHS[index % len(GLYPHS)][1]
    n = side * supersample
    c = (np.arange(n) + 0.5) / n * 2 - 1
    v, u = np.meshgrid(c, c, indexing="ij")
    return shape(u, v).astype(np.float64).reshape(side, supersample, side, supersample).mean(axis=(1, 3))


def glyph_trigger(index: int, side: int) -> np.ndarray:
    """Glyph ``index`` (mod the number of glyphs) in its two colours, (side, side, 3) uint8."""
    _, _, fg, bg = GLYPHS[index % len(GLYPHS)]
    cover = glyph_mask(index, side)[..., None]
    return np.rint(cover * np.array(fg) + (1 - cover) * np.array(bg)).astype(np.uint8)
