"""CTRL spectral trigger (spec section 3): block DCT, where the trigger's energy lands, rate semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchsuite.attacks.spectral import (
    Spectral,
    SpectralConfig,
    add_trigger,
    apply_spectral,
    block_dct,
    block_idct,
    rgb_to_yuv,
)
from benchsuite.core.errors import BenchError
from benchsuite.data.synthetic import make_synthetic
from benchsuite.settings.registry import get_registry


def _images(n: int, side: int, lo: int = 0, hi: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, size=(n, side, side, 3), dtype=np.uint8)


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).to(torch.float64).permute(0, 3, 1, 2)


def _coeffs(rgb: torch.Tensor, window: int) -> torch.Tensor:
    return block_dct(rgb_to_yuv(rgb), window)


def test_block_dct_is_the_orthonormal_dct2_of_each_block():
    x = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    n = 4
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    basis[0] /= np.sqrt(2)
    y = block_dct(x, n).numpy()
    for i in range(0, 8, n):
        for j in range(0, 12, n):
            block = x[..., i:i + n, j:j + n].numpy()
            expected = np.einsum("un,bcnm,vm->bcuv", basis, block, basis)
            np.testing.assert_allclose(y[..., i:i + n, j:j + n], expected, atol=1e-12)
    np.testing.assert_allclose(block_idct(block_dct(x, n), n), x, atol=1e-12)


def test_magnitude_zero_is_the_identity():
    images = _images(4, 64)
    config = SpectralConfig(magnitude=0.0)
    out = add_trigger(_float(images), config)
    assert float((out - _float(images)).abs().max()) < 1e-4
    np.testing.assert_array_equal(apply_spectral(images, config), images)


@pytest.mark.parametrize("config, side", [
    (SpectralConfig(), 64),  # CTRL defaults: U and V, (15,15) and (31,31), window 32 -> 2 x 2 blocks
    (SpectralConfig(channels=(0,), positions=((3, 5), (7, 0)), window=8, magnitude=30.0), 32),
])
def test_trigger_energy_is_exactly_at_the_chosen_coefficients(config, side):
    # mid-range images so the clamp to [0, 255] never bites
    images = _images(3, side, lo=70, hi=180)
    delta = (_coeffs(add_trigger(_float(images), config), config.window) - _coeffs(_float(images), config.window))
    expected = torch.zeros_like(delta)
    w = config.window
    for c in config.channels:
        for u, v in config.pairs:
            expected[:, c, u::w, v::w] = config.magnitude
    np.testing.assert_allclose(delta.numpy(), expected.numpy(), atol=1e-9)
    # after rounding to uint8 the chosen coefficients still hold nearly all the change's energy
    rounded = _coeffs(_float(apply_spectral(images, config)), w) - _coeffs(_float(images), w)
    on = (expected != 0)
    assert float((rounded[on] ** 2).sum() / (rounded ** 2).sum()) > 0.95


def test_triggered_images_stay_close_to_the_originals(tiny_splits):
    images = tiny_splits.train.images
    out = apply_spectral(images, SpectralConfig())
    diff = out.astype(np.float64) - images
    psnr = 10 * np.log10(255.0 ** 2 / np.mean(diff ** 2))
    print(f"CTRL default trigger on the synthetic images: PSNR {psnr:.2f} dB, max |diff| {np.abs(diff).max():.0f}")
    # per position and channel a coefficient of 100 moves a pixel by at most 100 / 16 = 6.25 (window 32);
    # two positions on U and V through YUV -> RGB: at most 2 * 6.25 * 2.029 (B from U) + rounding
    assert np.abs(diff).max() <= 2 * 6.25 * 2.029 + 0.5
    assert 30.0 < psnr < 45.0
    assert (np.abs(diff).reshape(len(images), -1).max(1) > 0).all()  # every image carries it


@pytest.mark.parametrize("rate", [0.25, 0.5, 1.0])
def test_rate_is_a_fraction_of_the_target_class_and_first_indices_are_taken(tiny_splits, rate):
    train = tiny_splits.train
    p = Spectral().poison(train, [3], rate, seed=0)
    candidates = np.flatnonzero(train.labels == 3)
    np.testing.assert_array_equal(p.poison_indices, candidates[: int(rate * len(candidates))])
    assert (p.poison_target[p.poison_mask] == 3).all() and (p.poison_target[~p.poison_mask] == -1).all()
    np.testing.assert_array_equal(p.train.images[~p.poison_mask], train.images[~p.poison_mask])
    assert (p.train.images[p.poison_mask] != train.images[p.poison_mask]).any(axis=(1, 2, 3)).all()
    assert (p.boxes == -1).all()


def test_dataset_rate_and_random_selection(tiny_splits):
    train = tiny_splits.train
    ctrl = Spectral(SpectralConfig(rate_of="dataset", selection="random"))
    a = ctrl.poison(train, [2], 0.05, seed=0)
    assert a.poison_mask.sum() == int(0.05 * len(train)) == 10
    assert (train.labels[a.poison_mask] == 2).all()
    b = ctrl.poison(train, [2], 0.05, seed=1)
    assert not np.array_equal(a.poison_indices, b.poison_indices)
    with pytest.raises(BenchError, match="has 20: lower the rate"):
        ctrl.poison(train, [2], 0.5, seed=0)


def test_patched_set_triggers_every_validation_image_without_boxes(tiny_splits):
    val = tiny_splits.val
    patched = Spectral().patch_val(val, 1, seed=0)
    np.testing.assert_array_equal(patched.labels, val.labels)
    np.testing.assert_array_equal(patched.images, apply_spectral(val.images, SpectralConfig()))
    assert (patched.images != val.images).any(axis=(1, 2, 3)).all()
    assert patched.boxes.shape == (len(val), 4) and (patched.boxes == -1).all()


def test_image_side_not_a_multiple_of_the_window_is_a_clear_error():
    splits = make_synthetic(num_train_per_class=2, num_val_per_class=1, image_size=48, seed=0)
    with pytest.raises(BenchError, match="not a whole number of 32px spectral windows: set attack.spectral.window"):
        Spectral().poison(splits.train, [0], 1.0, seed=0)
    Spectral(SpectralConfig(window=16, positions=((15, 15), (7, 7)))).poison(splits.train, [0], 1.0, seed=0)


@pytest.mark.parametrize("options, message", [
    ({"window": 16}, r"positions \[\(31, 31\)\] must lie in \[0, 16\)"),
    ({"channels": (3,)}, "YUV indices 0-2"),
    ({"rate_of": "all"}, "'target' or 'dataset'"),
    ({"selection": "best"}, "'first' or 'random'"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(BenchError, match=message):
        SpectralConfig(**options)


def test_registered_and_positions_accept_ctrl_style_ints():
    assert get_registry().get("attack", "spectral") is Spectral
    assert SpectralConfig(positions=(15, 31)).pairs == [(15, 15), (31, 31)]


def test_batches_give_the_same_images(monkeypatch):
    from benchsuite.attacks import spectral

    images = _images(7, 32)
    whole = apply_spectral(images, SpectralConfig())
    monkeypatch.setattr(spectral, "CHUNK_PIXELS", 3 * 32 * 32)  # 3 images per batch
    np.testing.assert_array_equal(apply_spectral(images, SpectralConfig()), whole)
