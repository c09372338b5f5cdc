"""RandomResizedCrop: torchvision's box sampling (10 tries, centre-crop fallback) and its resampling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from benchsuite.core.cache import stable_hash
from benchsuite.core.errors import BenchError
from benchsuite.ssl.augment import AugmentConfig, random_resized_crop
from benchsuite.ssl.trainer import TrainConfig

SIZE = 32
DRAWS = 4000


def _coordinate_images(n: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """Channel 0 holds each pixel's column, channel 1 its row: a crop's output reveals its box."""
    cols = torch.arange(width, dtype=torch.float32).expand(height, width)
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    return torch.stack([cols, rows, torch.zeros(height, width)])[None].expand(n, 3, height, width).contiguous()


def _side(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the pixel span that a row of resampled coordinates covers.

    Output pixel k of a box [s, s + n) resized to m pixels sits at s + (k + 0.5) n / m - 0.5; two
    interior pixels (away from the edge clamping) give n and s; a flipped row runs backwards.
    """
    m = values.shape[1]
    k1, k2 = m // 4, 3 * m // 4
    step = (values[:, k2] - values[:, k1]) / (k2 - k1)
    start = values[:, k1] - (k1 + 0.5) * step + 0.5
    start = torch.where(step < 0, start + step * m, start)
    return start.double().numpy(), (step.abs() * m).double().numpy()


def _boxes(out: torch.Tensor) -> dict[str, np.ndarray]:
    j, w = _side(out[:, 0, 0, :])
    i, h = _side(out[:, 1, :, 0])
    return {"i": i, "j": j, "h": h, "w": w}


def _crop_boxes(cfg: AugmentConfig, n: int = DRAWS, seed: int = 0) -> dict[str, np.ndarray]:
    out = random_resized_crop(_coordinate_images(n), cfg, torch.Generator().manual_seed(seed))
    return {k: np.round(v) for k, v in _boxes(out).items()}


def _torchvision_boxes(scale: tuple[float, float], n: int = DRAWS, seed: int = 1) -> dict[str, np.ndarray]:
    from torchvision.transforms import RandomResizedCrop

    img = torch.empty(3, SIZE, SIZE)
    with torch.random.fork_rng():  # get_params draws from the global generator
        torch.manual_seed(seed)
        rows = [RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    i, j, h, w = (np.array(col, dtype=np.float64) for col in zip(*rows, strict=True))
    return {"i": i, "j": j, "h": h, "w": w}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    at = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, at, side="right") / len(a)
                        - np.searchsorted(b, at, side="right") / len(b)).max())


def _statistics(box: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"area": box["w"] * box["h"] / SIZE**2, "aspect": box["w"] / box["h"],
            "x": (box["j"] + box["w"] / 2) / SIZE, "y": (box["i"] + box["h"] / 2) / SIZE}


def test_scale_one_is_the_identity_on_a_square_image():
    """At full area the only box that fits (aspect ~1) is the whole image, and so is torchvision's fallback."""
    x = torch.rand(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop(x, AugmentConfig(crop_scale=(1.0, 1.0), flip_prob=0.0), torch.Generator().manual_seed(1))
    assert float((out - x).abs().max()) < 1e-5


def test_fallback_is_torchvision_centre_crop_on_a_wide_image():
    """No full-area box of aspect 3/4-4/3 fits 16 x 32: the centre crop at the clamped ratio 4/3."""
    tv = pytest.importorskip("torchvision.transforms")
    out = random_resized_crop(_coordinate_images(8, 16, 32), AugmentConfig(crop_scale=(1.0, 1.0), flip_prob=0.0),
                              torch.Generator().manual_seed(0))
    expected = tv.RandomResizedCrop.get_params(torch.empty(3, 16, 32), [1.0, 1.0], [3 / 4, 4 / 3])
    assert expected == (0, 5, 16, 21)
    box = {k: np.round(v) for k, v in _boxes(out).items()}
    assert all((box[k] == value).all() for k, value in zip("ijhw", expected, strict=True))


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.5, 1.0)])
def test_box_distribution_matches_torchvision(scale):
    """Area fraction, aspect and box centre vs torchvision's get_params (KS test, 4000 draws each)."""
    pytest.importorskip("torchvision")
    ours = _statistics(_crop_boxes(AugmentConfig(crop_scale=scale, flip_prob=0.0)))
    theirs = _statistics(_torchvision_boxes(scale))
    critical = 1.95 * np.sqrt(2 / DRAWS)  # alpha = 0.001 (conservative for these discrete values)
    gaps = {k: _ks(ours[k], theirs[k]) for k in ours}
    assert max(gaps.values()) < critical, (gaps, critical)


def test_boxes_are_whole_pixels_inside_the_image_within_the_ranges():
    """No box is clipped to the image: each is a drawn area/aspect box (up to rounding) or the fallback."""
    cfg = AugmentConfig(crop_scale=(0.9, 1.0), flip_prob=0.0)
    out = random_resized_crop(_coordinate_images(2000), cfg, torch.Generator().manual_seed(3))
    raw = _boxes(out)
    for v in raw.values():
        assert np.abs(v - np.round(v)).max() < 1e-3  # integer pixel boxes and offsets
    b = {k: np.round(v) for k, v in raw.items()}
    assert (b["i"] >= 0).all() and (b["j"] >= 0).all()
    assert (b["i"] + b["h"] <= SIZE).all() and (b["j"] + b["w"] <= SIZE).all()
    w, h, area = b["w"], b["h"], SIZE**2
    fallback = (w == SIZE) & (h == SIZE)
    drawn = (((w - 0.5) * (h - 0.5) <= area) & ((w + 0.5) * (h + 0.5) >= 0.9 * area)
             & ((w - 0.5) / (h + 0.5) <= 4 / 3) & ((w + 0.5) / (h - 0.5) >= 3 / 4))
    assert (fallback | drawn).all()
    assert fallback.any() and drawn.any()


def test_resampling_matches_torchvision_resized_crop_and_flip():
    """The grid_sample resampling equals crop + bilinear resize (+ flip) for the same box."""
    tf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(400, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    cfg = AugmentConfig(crop_scale=(0.08, 1.0), crop_ratio=(0.5, 2.0), flip_prob=0.5)
    out = random_resized_crop(x, cfg, torch.Generator().manual_seed(1))
    coords = random_resized_crop(_coordinate_images(400, 24, 20), cfg, torch.Generator().manual_seed(1))
    box = {k: np.round(v).astype(int) for k, v in _boxes(coords).items()}
    flipped = (coords[:, 0, 0, -1] < coords[:, 0, 0, 0]).numpy()
    assert 100 < flipped.sum() < 300
    for n in range(len(x)):
        ref = tf.resized_crop(x[n], int(box["i"][n]), int(box["j"][n]), int(box["h"][n]), int(box["w"][n]), [24, 20],
                              antialias=True)
        if flipped[n]:
            ref = ref.flip(-1)
        assert float((out[n] - ref).abs().max()) < 1e-5, n


def test_crop_draws_are_deterministic_and_shard_like_one_process():
    x = torch.rand(12, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    cfg = AugmentConfig()
    whole = random_resized_crop(x, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(whole, random_resized_crop(x, cfg, torch.Generator().manual_seed(5)))
    parts = [random_resized_crop(x[r:r + 4], cfg, torch.Generator().manual_seed(5), shard=(r, 12)) for r in (0, 4, 8)]
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize("bad", [{"crop_scale": (0.0, 1.0)}, {"crop_scale": (1.0, 0.5)},
                                 {"crop_ratio": (4 / 3, 3 / 4)}, {"crop_impl": "clipped"}])
def test_bad_crop_settings_name_the_fix(bad):
    with pytest.raises(BenchError, match="crop_"):
        AugmentConfig(**bad)


def test_encoders_cached_with_the_clipped_crop_get_a_new_key():
    """crop_impl is a plain (keyed) field, so an encoder trained with the old crop is not served."""
    @dataclass(frozen=True)
    class AugmentConfig:  # the fields of the clipped crop; the key includes the class name
        crop_scale: tuple = (0.2, 1.0)
        crop_ratio: tuple = (3 / 4, 4 / 3)
        flip_prob: float = 0.5
        jitter_prob: float = 0.8
        brightness: float = 0.4
        contrast: float = 0.4
        saturation: float = 0.4
        hue: float = 0.1
        gray_prob: float = 0.2
        blur_prob: float = 0.0
        blur_sigma: tuple = (0.1, 2.0)
        mean: tuple = (0.485, 0.456, 0.406)
        std: tuple = (0.229, 0.224, 0.225)

    @dataclass(frozen=True)
    class TrainConfig_:
        epochs: int = 200
        batch_size: int = 256
        lr: float = 0.06
        weight_decay: float = 5e-4
        momentum: float = 0.9
        optimizer: str = "sgd"
        warmup_epochs: int = 0
        checkpoint_every: int = 1
        augment: AugmentConfig = field(default_factory=AugmentConfig)

    TrainConfig_.__name__ = "TrainConfig"
    # (with crop_impl added, the same config keeps today's key: see test_ssl_methods)
    assert stable_hash(TrainConfig(epochs=15)) != stable_hash(TrainConfig_(epochs=15))
