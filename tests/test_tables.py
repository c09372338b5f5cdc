"""Table 1 layout: one row per target, an average row, mean ± std over seeds, defense column groups."""

from __future__ import annotations

import pandas as pd

from benchsuite.reporting.tables import dacc_frame, markdown_table, patchsearch_t2_frame, rich_table, table1_frame


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
    # target 0: seeds 30 and 50 -> 40 ± 14.1 (sample std over the two seeds: sqrt(200)); average row: per seed
    # the mean over targets (20, 30) -> 25 ± 7.1
    assert frame[("w/o Defense", "Patched ASR")].tolist() == ["40.0 ± 14.1 (n=2)", "10.0 ± 0.0 (n=2)",
                                                              "25.0 ± 7.1 (n=2)"]
    assert frame[("Clean model (ref.)", "Patched ASR")].tolist() == ["1.0 ± 0.0 (n=2)", "3.0 ± 0.0 (n=2)",
                                                                     "2.0 ± 0.0 (n=2)"]
    # the reference is the last column group
    assert frame.columns[-1] == ("Clean model (ref.)", "Patched ASR")
    assert "w/o Defense Patched ASR" in markdown_table(frame)


def test_a_seed_without_a_value_is_shown_in_the_count_not_dropped_silently():
    rows = [_row(0, 0, "none", 30.0), _row(0, 1, "none", 50.0), _row(0, 2, "none", float("nan"))]
    frame = table1_frame(pd.DataFrame(rows))
    assert frame[("w/o Defense", "Patched ASR")].tolist() == ["40.0 ± 14.1 (n=2 of 3)"]
    frame = table1_frame(pd.DataFrame(rows[:1] + rows[2:]))
    assert frame[("w/o Defense", "Patched ASR")].tolist() == ["30.0 (n=1 of 2)"]


def test_three_seeds_use_the_sample_std():
    rows = [_row(0, s, "none", v) for s, v in enumerate([10.0, 20.0, 60.0])]
    # mean 30, sample std sqrt(((20)^2 + (10)^2 + (30)^2) / 2) = sqrt(700) = 26.46 (population std: 21.6)
    assert table1_frame(pd.DataFrame(rows))[("w/o Defense", "Patched ASR")].tolist() == ["30.0 ± 26.5 (n=3)"]


def test_a_single_seed_shows_plain_values():
    frame = table1_frame(pd.DataFrame([_row(0, 0, "none", 30.0)]))
    assert frame[("w/o Defense", "Patched ASR")].tolist() == ["30.0"]
    assert list(frame[("", "Target")]) == ["0"]


def _verdict_row(attack, target, seed, trojaned, clean_trojaned):
    return dict(dataset="synthetic", attack=attack, rate=1.0, targets=str(target), target=target, seed=seed,
                defense="sslcleanse", trojaned=trojaned, clean_trojaned=clean_trojaned, patched_asr=1.0)


def test_dacc_counts_each_encoder_once():
    # three poisoned encoders (two flagged); the clean encoder of seed 0 is flagged in both of its cells
    # but is one encoder; seed 1's clean encoder is not flagged
    rows = [_verdict_row("htba", 0, 0, True, True), _verdict_row("htba", 1, 0, False, True),
            _verdict_row("htba", 0, 1, True, False)]
    frame = dacc_frame(pd.DataFrame(rows))
    first = frame.iloc[0]
    assert first[("Trojaned", "encoders")] == "3" and first[("Trojaned", "TP")] == "2"
    assert first[("Clean", "encoders")] == "2" and first[("Clean", "FP")] == "1"
    assert first[("", "DACC (%)")] == "60.0"  # (2 TP + 1 TN) / 5 encoders
    assert dacc_frame(pd.DataFrame([_row(0, 0, "none", 30.0)])) is None


def test_patchsearch_table2_names_rows_like_the_paper():
    rows = [_row(0, 0, "none", 30.0), _row(0, 1, "none", 50.0), _row(0, 0, "clean-model", 1.0),
            _row(0, 0, "patchsearch", 2.0)]
    frame = patchsearch_t2_frame(pd.DataFrame(rows))
    assert list(frame[("", "Model")]) == ["Clean", "Backdoored", "PatchSearch"]
    assert list(frame[("Patched Data", "ASR")]) == ["1.0", "40.0 ± 14.1 (n=2)", "2.0"]


def test_rich_table_has_one_block_per_attack():
    rows = [_row(0, 0, "none", 30.0), {**_row(0, 0, "none", 5.0), "attack": "spectral"},
            {**_row(0, 0, "none", 20.0), "attack": "multi_target"},
            {**_row(1, 0, "none", 40.0), "attack": "multi_target"}]
    table = rich_table(table1_frame(pd.DataFrame(rows)), "t")
    # rows in grid order: htba 0 | spectral 0 | multi_target 0, 1, Average: a rule closes each attack's block
    assert [r.end_section for r in table.rows] == [True, True, False, False, False]
