"""The evaluator's view of an SSL-Cleanse verdict: the reversed trigger against the real one, the flagged class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchsuite.eval.reversed_trigger import (
    best_boxes,
    box_mask,
    colour_correlation,
    iou,
    judgement_columns,
    majority_label,
    mean_box,
    save_trigger_comparison,
    trigger_agreement,
)
from benchsuite.eval.trigger_codec import decode_trigger, encode_trigger
from benchsuite.reporting.tables import encoders_frame

SIZE, SIDE = 32, 8


def real_trigger(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def planted(x: int, y: int, trigger: np.ndarray, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """A reversed trigger that is ``trigger`` (first ``side`` px) at (x, y) on a random background pattern."""
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[y:y + side, x:x + side] = 0.9
    pattern = np.random.default_rng(5).random((3, SIZE, SIZE)).astype(np.float32)
    pattern[:, y:y + side, x:x + side] = trigger[:side, :side].transpose(2, 0, 1) / 255
    return mask, pattern


def boxes_around(x: int, y: int, n: int = 50) -> np.ndarray:
    """Poison boxes (x, y, w, h) spread symmetrically around (x, y), and clean rows of -1."""
    offsets = np.arange(n) % 7 - 3
    real = np.column_stack([x + offsets, y - offsets, np.full(n, SIDE), np.full(n, SIDE)])
    return np.vstack([real, -np.ones((20, 4), dtype=np.int64)])


def test_mean_box_ignores_clean_rows():
    assert mean_box(boxes_around(10, 12)) == (10, 12, 18, 20)
    with pytest.raises(ValueError):
        mean_box(-np.ones((3, 4), dtype=np.int64))


def test_reversed_trigger_at_the_mean_position_scores_one():
    trigger = real_trigger()
    mask, pattern = planted(10, 12, trigger)
    scores = trigger_agreement(mask, pattern, trigger, boxes_around(10, 12))
    assert scores["trigger_iou"] == 1.0 and scores["trigger_iou_best"] == 1.0
    assert scores["trigger_colour_corr"] == pytest.approx(1.0, abs=1e-6)
    assert scores["trigger_mask_px"] == scores["trigger_px"] == SIDE * SIDE


def test_a_shifted_trigger_loses_mean_iou_but_keeps_the_best():
    trigger = real_trigger()
    mask, pattern = planted(4, 20, trigger)  # 6 px left of and 8 px below the mean position
    scores = trigger_agreement(mask, pattern, trigger, boxes_around(10, 12))
    assert scores["trigger_iou"] == 0.0
    assert scores["trigger_iou_best"] == 1.0 and scores["trigger_colour_corr"] == pytest.approx(1.0, abs=1e-6)


def test_half_a_trigger_by_hand():
    trigger = real_trigger()
    mask, pattern = planted(10, 12, trigger, side=4)  # its top-left quarter: 16 of 64 px
    scores = trigger_agreement(mask, pattern, trigger, boxes_around(10, 12))
    assert scores["trigger_iou"] == pytest.approx(16 / 64)
    assert scores["trigger_colour_corr"] == pytest.approx(1.0, abs=1e-6)


def test_unrelated_colours_correlate_near_zero_and_a_weak_mask_is_empty():
    trigger = real_trigger()
    mask, _ = planted(10, 12, trigger)
    noise = np.random.default_rng(9).random((3, SIZE, SIZE)).astype(np.float32)
    assert abs(colour_correlation(noise, mask > 0.5, trigger, (10, 12, 18, 20))) < 0.2
    faint = trigger_agreement(mask * 0.5, noise, trigger, boxes_around(10, 12))  # 0.45 everywhere: below 0.5
    assert faint["trigger_mask_px"] == 0 and faint["trigger_iou"] == 0.0 and faint["trigger_iou_best"] == 0.0
    assert np.isnan(faint["trigger_colour_corr"])


def test_best_box_by_brute_force():
    found = np.random.default_rng(3).random((SIZE, SIZE)) > 0.8
    boxes, best = best_boxes(found, 6)
    brute = max(iou(found, box_mask(found.shape, (x, y, x + 6, y + 6)))
                for y in range(SIZE - 5) for x in range(SIZE - 5))
    assert best == pytest.approx(brute)
    assert all(iou(found, box_mask(found.shape, box)) == pytest.approx(brute) for box in boxes)


def test_majority_label():
    labels = np.array([0, 1, 1, 2, 1, 0])
    assert majority_label(np.array([0, 1, 2, 5]), labels) == (0, 0.5)  # tie 0/1: the smaller class
    assert majority_label(np.array([1, 2, 3, 4]), labels) == (1, 0.75)


def extras_for(smallest: int, mask, pattern, sample, clusters) -> dict:
    return {"k": 3, "norms": [0.2, 0.01, 0.3], "smallest": smallest, "sample": list(sample),
            "clusters": list(clusters), "trigger": encode_trigger(mask, pattern)}


def test_judgement_columns_name_the_cluster_and_score_its_trigger():
    trigger = real_trigger()
    mask, pattern = planted(10, 12, trigger)
    labels = np.repeat(np.arange(4), 10)  # 40 images, classes 0..3
    sample = np.array([0, 1, 2, 15, 16, 17, 18, 30, 31])
    clusters = np.array([0, 0, 0, 1, 1, 1, 0, 2, 2])  # cluster 1 = three images of class 1
    boxes = boxes_around(10, 12, n=40)[:40]
    poison_target = np.where(np.arange(40) < 40, 1, -1)
    extras = extras_for(1, mask, pattern, sample, clusters)
    found = decode_trigger(extras["trigger"])  # what the defense hands back (SSLCleanse.reversed_trigger)
    out = judgement_columns(extras, labels, {1: trigger}, boxes, poison_target, reversed_trigger=found)
    assert (out["flagged_label"], out["flagged_is_target"], out["k"]) == (1, True, 3)
    assert out["flagged_label_share"] == 1.0 and out["min_norm"] == 0.01 and out["median_norm"] == 0.2
    assert (out["target_cluster_norm"], out["target_cluster_rank"]) == (0.01, 1)
    assert out["trigger_iou"] > 0.95  # 8-bit PNG round trip of the mask
    # the same verdict when class 2 was attacked: the cluster is not the target's
    other = judgement_columns(extras_for(1, mask, pattern, sample, clusters), labels, {3: trigger}, boxes,
                              poison_target * 3)
    assert not other["flagged_is_target"]
    assert (other["target_cluster_norm"], other["target_cluster_rank"]) == (0.3, 3)  # class 3 = cluster 2
    assert np.isnan(judgement_columns(extras_for(1, mask, pattern, sample, clusters), labels, {2: trigger}, boxes,
                                      poison_target * 2)["target_cluster_norm"])  # no cluster of class 2
    assert judgement_columns({}, labels, {1: trigger}, boxes, poison_target) == {}  # an old verdict: no columns
    # a whole-image trigger (CTRL) has no boxes: the cluster columns, no trigger overlap, no error
    ctrl = judgement_columns(extras_for(1, mask, pattern, sample, clusters), labels, {1: trigger},
                             -np.ones_like(boxes), poison_target)
    assert ctrl["flagged_is_target"] and not any(name.startswith("trigger_") for name in ctrl)


def test_comparison_picture(tmp_path):
    trigger = real_trigger()
    mask, pattern = planted(10, 12, trigger)
    path = save_trigger_comparison(tmp_path / "c.png", mask, pattern, trigger, boxes_around(10, 12), "t")
    assert path.stat().st_size > 1000


def test_encoders_frame_lists_each_poisoned_and_each_clean_encoder_once():
    rows = []
    for seed in (0, 1):
        for target in (0, 1):  # two cells per seed share the seed's clean encoder
            rows.append(dict(dataset="synthetic", attack="htba", targets=str(target), target=target, rate=0.5,
                             seed=seed, defense="sslcleanse", anomaly_index=2.5 + target, trojaned=True,
                             clean_anomaly_index=0.7 + seed, clean_trojaned=False, flagged_label=target,
                             flagged_label_share=0.9, flagged_is_target=True, trigger_iou=0.4, k=10,
                             min_norm=0.01, median_norm=0.1, clean_k=9, target_cluster_norm=0.01,
                             target_cluster_rank=1, clean_target_cluster_norm=0.2, clean_target_cluster_rank=7))
    rows.append(dict(dataset="synthetic", attack="htba", targets="0", target=0, rate=0.5, seed=0, defense="none",
                     anomaly_index=np.nan))
    frame = encoders_frame(pd.DataFrame(rows))
    encoders = frame[("", "Encoder")].tolist()
    assert encoders == ["poisoned"] * 4 + ["clean"] * 2
    assert frame[("", "Score")].tolist() == [f"anomaly index {v}" for v in
                                             ("2.500", "3.500", "2.500", "3.500", "0.700", "1.700")]
    assert set(frame[("", "Defense")]) == {"SSL-Cleanse"}
    assert frame[("Smallest cluster", "class (share)")].tolist()[:2] == ["0 (90%)", "1 (90%)"]
    assert frame[("", "Verdict")].tolist() == ["trojaned"] * 4 + ["benign"] * 2
    assert frame[("", "K")].tolist() == ["10"] * 4 + ["9"] * 2
    assert frame[("Attacked class's cluster", "norm (rank)")].tolist() == ["0.010 (1)"] * 4 + ["0.200 (7)"] * 2
    assert encoders_frame(pd.DataFrame(rows[-1:])) is None
