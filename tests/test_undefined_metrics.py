"""Undefined is not zero: precision with nothing removed, recall without poisons, a top-k beyond the images
a search scored, and a filter whose no-trigger guard fired, in the metrics and the tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchsuite.eval.detection import (
    guard_columns,
    removal_metrics,
    retrieval_curve,
    topk_accuracy,
    topk_window_accuracy,
    window_metrics,
)
from benchsuite.reporting.tables import guard_notes, patchsearch_t1_frame, poisoncam_t2_frame, table2_frame


def test_precision_with_nothing_removed_and_recall_without_poisons_are_nan():
    poison = np.array([1, 1, 0, 0], dtype=bool)
    nothing = removal_metrics(np.zeros(4, dtype=bool), poison)
    assert nothing["removed"] == 0 and nothing["recall"] == 0.0 and np.isnan(nothing["precision"])
    clean = removal_metrics(np.array([1, 0, 0, 0], dtype=bool), np.zeros(4, dtype=bool))
    assert clean["precision"] == 0.0 and np.isnan(clean["recall"])


def test_top_k_beyond_the_scored_images_is_nan():
    # 6 images, the search scored 3 (the others ranked by a fill value, in index order)
    poison = np.array([1, 0, 1, 1, 1, 1], dtype=bool)
    scores = np.array([5.0, 4.0, 3.0, 0.0, 0.0, 0.0])
    top = topk_accuracy(scores, poison, ks=(2, 3, 5), n_scored=3)
    assert top["top2_acc"] == 50.0 and np.isclose(top["top3_acc"], 200 / 3) and np.isnan(top["top5_acc"])
    assert topk_accuracy(scores, poison, ks=(5,))["top5_acc"] == 80.0  # every image scored: defined
    boxes = np.where(poison[:, None], np.array([0, 0, 4, 4]), -1)  # a box on the poisons only
    windows = np.tile([0, 0, 4, 4], (6, 1))
    assert np.isnan(topk_window_accuracy(scores, windows, boxes, ks=(5,), n_scored=3)["top5_window_acc"])
    assert all(np.isnan(v) for v in window_metrics(scores, windows, boxes, k=5, n_scored=3).values())
    assert np.isclose(window_metrics(scores, windows, boxes, k=3, n_scored=3)["iou_all"], 100 * 2 / 3)
    curve = retrieval_curve(scores, windows, boxes, ks=(2, 5), n_scored=3)
    assert curve["iou_all"][0] == 50.0 and np.isnan(curve["iou_all"][1]) and curve["n_boxed"] == [1, 0]


def _filter_row(seed, removed, recall, precision, trigger_found=True, share=30.0):
    return dict(dataset="synthetic", attack="htba", rate=0.5, target=0, seed=seed, defense="patchsearch",
                clean_acc=90.0, clean_asr=1.0, patched_acc=50.0, patched_asr=20.0, removed=removed, recall=recall,
                precision=precision, top20_acc=10.0, trigger_found=trigger_found, best_flip_share=share)


def test_undefined_precision_reads_n_a_and_stays_out_of_the_mean():
    rows = pd.DataFrame([_filter_row(0, 0, 0.0, float("nan")), _filter_row(1, 10, 50.0, 80.0),
                         _filter_row(2, 10, 30.0, 60.0)])
    t2 = poisoncam_t2_frame(rows).set_index(("", "Metric"))
    assert t2.loc["Precision ↑", ("", "PatchSearch")] == "70.0 ± 14.1 (n=2 of 3)"  # not (0 + 80 + 60) / 3
    only_undefined = pd.DataFrame([_filter_row(0, 0, float("nan"), float("nan"))])
    table = table2_frame(only_undefined)  # the filter stays in the table although its recall is undefined
    assert table[("PatchSearch", "Precision")].tolist() == ["n/a"]
    assert table[("PatchSearch", "Recall")].tolist() == ["n/a"]


def test_a_fired_guard_is_marked_in_the_tables_and_explained():
    rows = pd.DataFrame([_filter_row(0, 0, 0.0, float("nan"), trigger_found=False, share=3.25),
                         _filter_row(1, 10, 50.0, 80.0)])
    removed = patchsearch_t1_frame(rows)[("", "Total Rem.")].iloc[0]
    assert removed == "5.0 ± 7.1 (n=2) (guard: no trigger in 1 of 2)"
    assert table2_frame(rows.iloc[:1])[("PatchSearch", "Removed")].tolist() == ["0.0 (guard: no trigger)"]
    assert guard_notes(rows) == ["guard: PatchSearch on htba target 0 seed 0 found no trigger and removed nothing; "
                                 "the best candidate flipped 3.2% of the flip set"]
    # read back from a CSV the column holds strings and NaN: still recognised; a filter without a guard: NaN
    assert guard_notes(rows.astype({"trigger_found": str})) == guard_notes(rows)
    assert guard_notes(rows.assign(trigger_found=float("nan"))) == []
    assert all(np.isnan(v) for v in guard_columns({}).values())
    assert guard_columns({"trigger_found": False, "best_flip_share": 0.05}) == {"trigger_found": False,
                                                                                 "best_flip_share": 5.0}
