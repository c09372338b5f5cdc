"""The random-trigger control: a seeded unrelated pattern exactly where the attack put its trigger."""

from __future__ import annotations

import numpy as np

from benchsuite.eval.trigger_control import control_images
from benchsuite.triggers import random_trigger


def test_the_pattern_lands_in_each_box_and_nowhere_else():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    boxes = np.array([[22, 22, 10, 10], [0, 5, 10, 10], [28, 28, 10, 10]])  # the last one runs off the image
    out = control_images(clean, boxes, [0, 9, 0xC7])
    pattern = random_trigger(10, [0, 9, 0xC7])
    assert np.array_equal(out[0, 22:32, 22:32], pattern) and np.array_equal(out[1, 5:15, 0:10], pattern)
    assert np.array_equal(out[2, 28:32, 28:32], pattern[:4, :4])
    outside = np.ones((3, 32, 32), bool)
    outside[0, 22:32, 22:32] = outside[1, 5:15, 0:10] = outside[2, 28:32, 28:32] = False
    assert np.array_equal(out[outside], clean[outside]) and np.array_equal(clean, clean.copy())
    assert not np.array_equal(control_images(clean, boxes, [1, 9, 0xC7]), out)  # seeded


def test_no_control_without_boxes():
    clean = np.zeros((2, 8, 8, 3), np.uint8)
    assert control_images(clean, -np.ones((2, 4), int), 0) is None  # a whole-image trigger (CTRL)
    assert control_images(clean, np.array([[0, 0, 2, 2]]), 0) is None  # not one box per image
