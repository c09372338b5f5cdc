"""ACC / FP / ASR against a hand-computed confusion matrix (spec 1.6)."""

from __future__ import annotations

import numpy as np
import pytest

from benchsuite.eval.metrics import accuracy, attack_success_rate, confusion_matrix, false_positives


def test_metrics_match_a_hand_computed_confusion_matrix():
    # 3 classes, target 2; rows = true, cols = predicted
    true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = np.array([0, 2, 2, 1, 1, 2, 1, 2, 2, 0])
    cm = confusion_matrix(true, pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 2], [0, 2, 1], [1, 0, 2]])
    assert accuracy(cm) == pytest.approx(50.0)  # (1 + 2 + 2) / 10
    # FP_2: non-target images predicted as 2 = column 2 minus the diagonal = 2 + 1
    assert false_positives(cm, 2) == 3
    # ASR = FP / #non-target images (7)
    assert attack_success_rate(cm, 2) == pytest.approx(100 * 3 / 7)
    assert false_positives(cm, 0) == 1 and attack_success_rate(cm, 0) == pytest.approx(100 / 6)


def test_detection_metrics_by_hand():
    from benchsuite.eval.detection import box_iou, catch_rate, removal_metrics, topk_accuracy

    poison = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    remove = np.array([1, 0, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    # 2 of 3 poisons caught, 2 of 3 removals are poisons
    assert removal_metrics(remove, poison) == pytest.approx({"removed": 3, "recall": 200 / 3, "precision": 200 / 3})
    scores = np.array([9, 1, 8, 0, 7, 0, 0, 0, 0, 0], dtype=float)
    top = topk_accuracy(scores, poison, ks=(2, 3, 20))
    assert top["top2_acc"] == pytest.approx(50.0) and top["top3_acc"] == pytest.approx(200 / 3)
    assert np.isnan(top["top20_acc"])
    window, trigger = np.array([[0, 0, 4, 4]]), np.array([[2, 2, 4, 4]])
    assert box_iou(window, trigger)[0] == pytest.approx(4 / 28)  # 2x2 overlap over 16 + 16 - 4
    assert catch_rate(window, trigger)[0] == pytest.approx(4 / 16)
