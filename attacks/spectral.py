"""CTRL spectral trigger (Li et al., ICCV'23 "An embarrassingly simple backdoor attack on SSL"; spec section 3).

Trigger: RGB (0-255) -> YUV (analog, kornia's matrix) -> orthonormal block DCT-II with ``window`` x
``window`` blocks -> add ``magnitude`` at every coefficient of ``positions`` on every channel of
``channels`` in every block -> inverse DCT -> RGB -> clamp to [0, 255]. YUV -> RGB is the exact
inverse of the forward matrix (kornia's rounded inverse is off by ~1e-4, so magnitude 0 would not
be the identity). The arithmetic runs in float64 with torch, batched, on the GPU when present.
CTRL keeps the poisoned images as floats; the suite stores uint8 images, so the result is rounded
to uint8 once, after the clamp (poisoned training images and patched validation images alike).

Image sides must be multiples of ``window`` (CTRL: 32 on CIFAR; 7 x 7 blocks at 224); there is
no padding, other sizes are refused.

Poisons (clean-label, only target-class images): ``rate_of='target'`` (default) reads ``rate`` as
a fraction of the target class, as HTBA and the grid's Rate column do; ``rate_of='dataset'`` is
CTRL's ``poison_ratio``, ``int(rate * len(train))`` images (CTRL: 0.01 -> 500 CIFAR-10 images, 10 %
of the target class). ``selection='first'`` takes the first target-class indices in dataset order
(CTRL), ``'random'`` a seeded shuffle (HTBA). The patched set triggers every validation image. A
spectral trigger has no box: every boxes row is -1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchsuite.api import Attack, DataAttack, NamedFigure, PatchedSet, Poisoning
from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Sized
from benchsuite.data import ImageDataset
from benchsuite.data.store import copy_on_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],  # kornia rgb_to_yuv (spec 3.1)
                       [-0.147, -0.289, 0.436],
                       [0.615, -0.515, -0.100]])
YUV = ("Y", "U", "V")
FIGURE_CHUNK = 64  # images per float64 batch of the spectrum figure
CHUNK_PIXELS = 1 << 24  # pixels per batch on the device (~400 MB per float64 copy)


@dataclass(frozen=True)
class SpectralConfig:
    channels: tuple[int, ...] = (1, 2)  # YUV channels carrying the trigger: 0 = Y, 1 = U, 2 = V
    positions: tuple[tuple[int, int] | int, ...] = ((15, 15), (31, 31))  # (row, col) in each block; an int p = (p, p)
    window: Sized = 32  # DCT block side
    magnitude: float = 100.0  # added to each chosen coefficient, on the 0-255 scale
    rate_of: str = "target"  # 'target': rate = fraction of the target class; 'dataset': of the training set (CTRL)
    selection: str = "first"  # 'first' target-class indices (CTRL) or 'random' (seeded, as HTBA)

    def __post_init__(self) -> None:
        w = self.window
        if not isinstance(w, int) or w < 1:
            raise BenchError(f"spectral window {w!r} must be a positive integer, e.g. 32")
        if not self.channels or any(c not in (0, 1, 2) for c in self.channels):
            raise BenchError(f"spectral channels {self.channels!r} must be YUV indices 0-2, e.g. [1, 2] for U and V")
        bad = [p for p in self.pairs if not (0 <= p[0] < w and 0 <= p[1] < w)]
        if not self.pairs or bad:
            raise BenchError(f"spectral positions {bad or '[]'} must lie in [0, {w}) (the window): "
                             "set attack.spectral.positions, e.g. [[15, 15], [31, 31]]")
        if self.rate_of not in ("target", "dataset"):
            raise BenchError(f"spectral rate_of {self.rate_of!r} must be 'target' or 'dataset'")
        if self.selection not in ("first", "random"):
            raise BenchError(f"spectral selection {self.selection!r} must be 'first' or 'random'")

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """``positions`` as (row, col) pairs (TOML gives lists; CTRL's ``--trigger_position 15 31`` = ints)."""
        return [(int(p), int(p)) if np.isscalar(p) else (int(p[0]), int(p[1])) for p in self.positions]


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """Orthonormal DCT-II matrix: row k is the k-th basis vector, so ``D @ x`` transforms and ``D.T @ y`` inverts."""
    k = torch.arange(n, dtype=dtype, device=device)[:, None]
    i = torch.arange(n, dtype=dtype, device=device)[None, :]
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    d[0] /= 2.0 ** 0.5
    return d


def _blocks(x: torch.Tensor, window: int) -> torch.Tensor:
    b, c, h, w = x.shape
    if h % window or w % window:
        raise BenchError(f"a {h}x{w} image is not a whole number of {window}px spectral windows: set "
                         f"attack.spectral.window to a divisor of the image side (CTRL: 32)")
    return x.reshape(b, c, h // window, window, w // window, window)


def block_dct(x: torch.Tensor, window: int) -> torch.Tensor:
    """2-D DCT-II (ortho) of every ``window`` block of (B, C, H, W); a block's coefficient (u, v) stays in place."""
    d = dct_matrix(window, x.dtype, x.device)
    return torch.einsum("un,bcinjm,vm->bciujv", d, _blocks(x, window), d).reshape(x.shape)


def block_idct(y: torch.Tensor, window: int) -> torch.Tensor:
    """Inverse of :func:`block_dct`."""
    d = dct_matrix(window, y.dtype, y.device)
    return torch.einsum("un,bciujv,vm->bcinjm", d, _blocks(y, window), d).reshape(y.shape)


def _color(x: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    return torch.einsum("oc,bchw->bohw", torch.as_tensor(matrix, dtype=x.dtype, device=x.device), x)


def rgb_to_yuv(x: torch.Tensor) -> torch.Tensor:
    return _color(x, RGB_TO_YUV)


def yuv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return _color(x, np.linalg.inv(RGB_TO_YUV))


def add_trigger(rgb: torch.Tensor, config: SpectralConfig) -> torch.Tensor:
    """The CTRL trigger on float (B, 3, H, W) RGB images on the 0-255 scale, clamped, not rounded."""
    w = config.window
    coeffs = block_dct(rgb_to_yuv(rgb), w)
    for c in config.channels:
        for u, v in config.pairs:
            coeffs[:, c, u::w, v::w] += config.magnitude
    return yuv_to_rgb(block_idct(coeffs, w)).clamp(0.0, 255.0)


def apply_spectral(images: np.ndarray, config: SpectralConfig) -> np.ndarray:
    """The trigger on (N, H, W, 3) uint8 images, rounded back to uint8 (the suite's image format)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = np.empty_like(images)
    chunk = max(1, CHUNK_PIXELS // (images.shape[1] * images.shape[2]))
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start:start + chunk]).to(device, torch.float64).permute(0, 3, 1, 2)
        y = add_trigger(x, config).round().permute(0, 2, 3, 1)
        out[start:start + chunk] = y.to(torch.uint8).cpu().numpy()
    return out


def select_poisons(labels: np.ndarray, target: int, rate: float, config: SpectralConfig, seed: int) -> np.ndarray:
    """Sorted indices of the target-class images to poison (see the module docstring)."""
    if not 0 < rate <= 1:
        whole = "target class" if config.rate_of == "target" else "training set"
        raise BenchError(f"poison rate {rate} must be in (0, 1] (a fraction of the {whole})")
    candidates = np.flatnonzero(labels == target)
    n = int(rate * (len(labels) if config.rate_of == "dataset" else len(candidates)))
    if n > len(candidates):
        raise BenchError(f"rate {rate} of the training set is {n} images but target class {target} has "
                         f"{len(candidates)}: lower the rate or set attack.spectral.rate_of='target'")
    if config.selection == "random":
        candidates = np.random.default_rng([seed, target, 0]).permutation(candidates)
    return np.sort(candidates[:n])


def difference_spectrum(poisoned: np.ndarray, clean: np.ndarray, window: int) -> np.ndarray:
    """(3, window, window) magnitude of the orthonormal DCT of the mean poisoned - clean difference in YUV,
    averaged over the images and over the ``window`` blocks (all linear, so it is the mean of the block DCTs)."""
    h, w = clean.shape[1:3]
    total = np.zeros(clean.shape[1:], dtype=np.float64)
    for i in range(0, len(clean), FIGURE_CHUNK):
        total += (poisoned[i:i + FIGURE_CHUNK].astype(np.float64) - clean[i:i + FIGURE_CHUNK]).sum(0)
    yuv = (total / len(clean)) @ RGB_TO_YUV.T  # (H, W, 3); kornia's YUV has no offset, so yuv(p) - yuv(c) = yuv(p - c)
    block = yuv[: h - h % window, : w - w % window].reshape(h // window, window, w // window, window, 3).mean((0, 2))
    d = dct_matrix(window).numpy()
    return np.abs(np.einsum("un,nmc,vm->cuv", d, block, d))



def spectrum_figure(spectrum: np.ndarray, config: SpectralConfig, n_poisons: int, title: str) -> Figure:
    """The log DCT magnitude per YUV channel, the attacked coefficients circled."""
    from matplotlib.figure import Figure  # matplotlib: only when pictures are drawn

    logmag = np.log10(spectrum + 1e-3)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for c, ax in enumerate(axes):
        im = ax.imshow(logmag[c], cmap="magma", vmin=logmag.min(), vmax=logmag.max(), interpolation="nearest")
        ax.set_title(f"{YUV[c]}{' (attacked)' if c in config.channels else ''}", fontsize=9)
        ax.set_xlabel("DCT column v")
        if c in config.channels:
            for u, v in config.pairs:
                ax.scatter([v], [u], s=120, facecolors="none", edgecolors="cyan", linewidths=1.2,
                           clip_on=False)
    axes[0].set_ylabel("DCT row u")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="log10 |mean DCT coefficient|")
    fig.suptitle(f"{title}: DCT of the poisoned - clean difference, mean over {n_poisons} poisons", fontsize=9)
    return fig


class Spectral(DataAttack):
    name = "spectral"
    Config = SpectralConfig
    description = "CTRL: a fixed frequency-domain (block DCT, YUV) trigger on a fraction of the target class"

    def poison_count(self, labels: np.ndarray, target: int, rate: float) -> int:
        if self.config.rate_of == "dataset":  # CTRL's poison_ratio: a fraction of the training set
            return int(rate * len(labels))
        return super().poison_count(labels, target, rate)

    def poison(self, train: ImageDataset, targets: list[int], rate: float, seed: int) -> Poisoning:
        if len(targets) != 1:
            raise BenchError(f"spectral poisons one target per cell, got {targets}: give one target per cell, e.g. 0,3")
        target = targets[0]
        chosen = select_poisons(train.labels, target, rate, self.config, seed)
        images = copy_on_write(train.images)  # a stage map: only the poisons' pages are copied
        images[chosen] = apply_spectral(train.images[chosen], self.config)
        mask = np.zeros(len(train), dtype=bool)
        mask[chosen] = True
        boxes = np.full((len(train), 4), -1, dtype=np.int64)
        return Poisoning(ImageDataset(images, train.labels, train.classes), mask, np.where(mask, target, -1), boxes,
                         {target: self.pattern()})

    def patch_val(self, val: ImageDataset, target: int, seed: int) -> PatchedSet:
        return PatchedSet(apply_spectral(val.images, self.config), val.labels, np.full((len(val), 4), -1, np.int64))

    def extra_figures(self, poisoned: Callable[[], tuple[np.ndarray, np.ndarray]], title: str) -> list[NamedFigure]:
        """The DCT spectrum of the poisoned - clean difference, the attacked coefficients circled."""
        sample_poisoned, sample_clean = poisoned()
        if not len(sample_poisoned):
            return []
        config = self.config
        spectrum = difference_spectrum(sample_poisoned, sample_clean, config.window)
        attacked = ", ".join(YUV[c] for c in config.channels)
        caption = (f"{self.name}: log10 magnitude of the orthonormal {config.window}x{config.window} block DCT (YUV) "
                   f"of the poisoned - clean difference, averaged over {len(sample_poisoned)} poisons and every "
                   f"block; circles: the coefficients the attack raises by {config.magnitude:g} on {attacked}")
        return [("attack_spectrum.png", spectrum_figure(spectrum, config, len(sample_poisoned), title), caption)]

    def pattern(self) -> np.ndarray:
        """One window of mid-grey with the trigger: what the trigger looks like (kept with the poisons)."""
        grey = np.full((1, self.config.window, self.config.window, 3), 128, dtype=np.uint8)
        return apply_spectral(grey, self.config)[0]


@hookimpl
def benchsuite_attacks() -> list[type[Attack]]:
    return [Spectral]
