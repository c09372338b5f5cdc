"""Detection metrics by hand: PoisonCAM's window accuracy, the zero-counting IoU / CR, the pasting control."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchsuite.eval.detection import (
    control_flag_rate,
    control_images,
    retrieval_curve,
    topk_window_accuracy,
    window_metrics,
)

NONE = [-1, -1, -1, -1]


def _example() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six images ranked by score: poisons with exact, partial, missing and disjoint windows, two clean ones."""
    scores = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    windows = np.array([[0, 0, 10, 10],    # poison, exact: IoU 1, CR 1, hit
                        [0, 0, 10, 10],    # clean image: no trigger, a miss, counts 0
                        [0, 0, 10, 10],    # poison, half overlap: IoU 1/3, CR 1/2, hit
                        [20, 20, 4, 4],    # poison, window beside the trigger: IoU 0, CR 0, miss
                        NONE,              # poison without a located window: a miss, counts 0
                        [0, 0, 10, 10]])   # clean image
    boxes = np.array([[0, 0, 10, 10], NONE, [5, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], NONE])
    return scores, windows, boxes


def test_topk_window_accuracy_counts_any_overlap_with_the_trigger():
    scores, windows, boxes = _example()
    acc = topk_window_accuracy(scores, windows, boxes, ks=(1, 2, 3, 4, 6, 7))
    assert acc == pytest.approx({"top1_window_acc": 100.0, "top2_window_acc": 50.0, "top3_window_acc": 200 / 3,
                                 "top4_window_acc": 50.0, "top6_window_acc": 100 / 3,
                                 "top7_window_acc": math.nan}, nan_ok=True)
    # touching edges share no area: not "part of the trigger inside the window"
    edge = topk_window_accuracy(scores[:1], np.array([[10, 0, 5, 5]]), np.array([[0, 0, 10, 10]]), ks=(1,))
    assert edge == {"top1_window_acc": 0.0}
    # no trigger box anywhere (spectral) or no windows: not applicable, not zero
    assert math.isnan(topk_window_accuracy(scores, windows, np.full((6, 4), -1), ks=(2,))["top2_window_acc"])
    assert math.isnan(topk_window_accuracy(scores, None, boxes, ks=(2,))["top2_window_acc"])


def test_window_metrics_zero_counting_variant():
    scores, windows, boxes = _example()
    m = window_metrics(scores, windows, boxes, k=4)
    # poisons only (the 3 boxed, windowed poisons of the top 4) vs every top-4 image, the clean one as 0
    assert m["iou"] == pytest.approx(100 * (1 + 1 / 3 + 0) / 3)
    assert m["catch_rate"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert m["iou_all"] == pytest.approx(100 * (1 + 0 + 1 / 3 + 0) / 4)
    assert m["catch_rate_all"] == pytest.approx(100 * (1 + 0 + 0.5 + 0) / 4)
    # a top-k without any boxed poison: poisons-only is undefined, the retrieved windows score 0
    only_clean = window_metrics(np.array([1.0, 2.0]), windows[:2], boxes[:2], k=1)
    assert math.isnan(only_clean["iou"]) and only_clean["iou_all"] == 0.0 and only_clean["catch_rate_all"] == 0.0
    # spectral (no box at all) and no windows: both variants not applicable
    for m in (window_metrics(scores, windows, np.full((6, 4), -1)), window_metrics(scores, None, boxes)):
        assert all(math.isnan(m[c]) for c in ("iou", "catch_rate", "iou_all", "catch_rate_all"))


def test_retrieval_curve_has_both_variants():
    scores, windows, boxes = _example()
    curve = retrieval_curve(scores, windows, boxes, ks=(2, 6))
    np.testing.assert_allclose(curve["iou_all"], [50.0, 100 * (1 + 1 / 3) / 6])
    np.testing.assert_allclose(curve["catch_rate_all"], [50.0, 100 * 1.5 / 6])
    np.testing.assert_allclose(curve["iou"], [100.0, 100 * (1 + 1 / 3) / 3])


def _planted(n: int = 40, side: int = 16):
    """Images of constant colour per index; images 0-9 are target-0 poisons with a 4 px box, 30-39 clean class 0."""
    rng = np.random.default_rng(0)
    images = np.repeat(rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8), side, 1).repeat(side, 2)
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10 + [0] * 10)
    poison_target = np.where(np.arange(n) < 10, 0, -1)
    boxes = np.full((n, 4), -1)
    boxes[:10] = [[2 + i % 5, 3 + i % 7, 4, 4] for i in range(10)]
    return images, labels, poison_target, boxes


def test_control_images_paste_a_foreign_square_like_the_attack():
    images, labels, poison_target, boxes = _planted()
    control, hosts, where = control_images(images, labels, poison_target, boxes, seed=3, n=15)
    assert control.shape == (15, 16, 16, 3) and control.dtype == np.uint8
    # hosts: clean images of a non-target class (10-29), each once
    assert len(set(hosts.tolist())) == 15 and np.isin(hosts, np.arange(10, 30)).all()
    # each square has the trigger's size and one of the attack's positions
    assert {tuple(b) for b in where} <= {tuple(b) for b in boxes[:10]}
    for img, host, (x, y, w, h) in zip(control, hosts, where):
        inside = np.zeros((16, 16), bool)
        inside[y:y + h, x:x + w] = True
        np.testing.assert_array_equal(img[~inside], images[host][~inside])
        square = img[y:y + h, x:x + w].reshape(-1, 3)
        assert (square == square[0]).all()  # from one constant-colour image ...
        assert not (square[0] == images[host, 0, 0]).all()  # ... not the host
        assert any((square[0] == images[j, 0, 0]).all() for j in range(10, 40))  # a clean image's colour
    again = control_images(images, labels, poison_target, boxes, seed=3, n=15)
    np.testing.assert_array_equal(again[0], control)
    assert not np.array_equal(control_images(images, labels, poison_target, boxes, seed=4, n=15)[0], control)
    # no trigger box (spectral) or no poison: no control set
    assert control_images(images, labels, poison_target, np.full((40, 4), -1), seed=3) is None
    assert control_images(images, labels, np.full(40, -1), np.full((40, 4), -1), seed=3) is None
    # n above the clean non-target images: all of them
    assert len(control_images(images, labels, poison_target, boxes, seed=3, n=500)[1]) == 20


def test_control_flag_rate_of_always_and_never_flagging_classifiers():
    images, labels, poison_target, boxes = _planted()
    control, hosts, where = control_images(images, labels, poison_target, boxes, seed=0, n=20)

    def pasted(batch: np.ndarray) -> np.ndarray:
        """Flags an image whose pixels are not all one colour: every pasted square, no clean image."""
        return (batch != batch[:, :1, :1]).any(axis=(1, 2, 3))

    assert not pasted(images[10:30]).any()
    assert control_flag_rate(pasted, control) == pytest.approx(100.0)
    assert control_flag_rate(lambda batch: np.zeros(len(batch), bool), control) == 0.0
    assert control_flag_rate(lambda batch: np.arange(len(batch)) % 4 == 0, control) == pytest.approx(25.0)
    assert math.isnan(control_flag_rate(None, control))  # a filter that cannot score new images
    assert math.isnan(control_flag_rate(pasted, None))  # no control set (no trigger box)
