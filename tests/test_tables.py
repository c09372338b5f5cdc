"""Table 1 layout: one row per target, an average row, mean ± std over seeds, defense column groups."""

from __future__ import annotations

import pandas as pd

from benchsuite.tables import markdown_table, table1_frame


def _row(target, seed, defense, patched_asr):
    return dict(dataset="synthetic", attack="htba", rate=1.0, target=target, seed=seed, defense=defense,
                clean_acc=90.0, clean_asr=1.0, patched_acc=50.0, patched_asr=patched_asr)


def test_table1_groups_defenses_and_averages_targets_then_seeds():
    rows = [_row(0, 0, "none", 30.0), _row(0, 1, "none", 50.0), _row(1, 0, "none", 10.0), _row(1, 1, "none", 10.0),
            _row(0, 0, "clean-model", 1.0), _row(0, 1, "clean-model", 1.0),
            _row(1, 0, "clean-model", 3.0), _row(1, 1, "clean-model", 3.0)]
    frame = table1_frame(pd.DataFrame(rows))
    assert list(frame[("", "Target")]) == ["0", "1", "Average"]
    assert list(frame[("", "Rate")]) == ["100%"] * 3
    # target 0: seeds 30 and 50 -> 40 ± 10 (population std over seeds)
    assert frame[("w/o Defense", "Patched ASR")].tolist() == ["40.0 ± 10.0", "10.0 ± 0.0", "25.0 ± 5.0"]
    assert frame[("Clean model (ref.)", "Patched ASR")].tolist() == ["1.0 ± 0.0", "3.0 ± 0.0", "2.0 ± 0.0"]
    # the reference is the last column group
    assert frame.columns[-1] == ("Clean model (ref.)", "Patched ASR")
    assert "w/o Defense Patched ASR" in markdown_table(frame)


def test_a_single_seed_shows_plain_values():
    frame = table1_frame(pd.DataFrame([_row(0, 0, "none", 30.0)]))
    assert frame[("w/o Defense", "Patched ASR")].tolist() == ["30.0"]
    assert list(frame[("", "Target")]) == ["0"]
