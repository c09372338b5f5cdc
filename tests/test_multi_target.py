"""Multi-target HTBA (spec section 2), its grid cells, the retrieval curve (PoisonCAM Figure 4) end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchsuite.attacks.htba import HTBA, HTBAConfig
from benchsuite.attacks.multi_target import MultiTarget, MultiTargetConfig
from benchsuite.cli import main
from benchsuite.config import GridSpec, RunConfig
from benchsuite.errors import BenchError
from benchsuite.eval.detection import per_target_detection, retrieval_curve
from benchsuite.eval.retrieval_plot import save_retrieval
from benchsuite.grid import cells


def _attack(**kw) -> MultiTarget:
    return MultiTarget(MultiTargetConfig(trigger_size=6, **kw))


@pytest.mark.parametrize("targets, options, expected", [
    ((0,), {}, (0, 1, 2)),
    ((8,), {}, (8, 9, 0)),
    ((4,), {"n_targets": 2}, (4, 5)),
    ((4,), {"targets": (1, 6)}, (1, 6)),
    ((0, 3, 5), {}, (0, 3, 5)),  # an explicit multi-target cell is kept
])
def test_cell_targets(targets, options, expected):
    assert _attack(**options).cell_targets(targets, 10) == expected


@pytest.mark.parametrize("targets, options, message", [
    ((0, 0), {}, "repeat a class"),
    ((0,), {"n_targets": 11}, r"n_targets=11 must be in \[1, 10\]"),
    ((12,), {}, "target class 12 is out of range"),
])
def test_bad_cell_targets(targets, options, message):
    with pytest.raises(BenchError, match=message):
        _attack(**options).cell_targets(targets, 10)


def test_grid_cells_use_the_attacks_targets():
    config = RunConfig(grid=GridSpec(attacks=("htba", "multi_target"), targets=((0,), (1,))))
    widen = {"htba": lambda t: t, "multi_target": lambda t: (0, 5)}
    got = cells(config, lambda attack, targets: widen[attack](targets))
    # both multi-target cells become (0, 5): one cell
    assert [(c.attack, c.targets) for c in got] == [("htba", (0,)), ("htba", (1,)), ("multi_target", (0, 5))]


@pytest.mark.parametrize("rate", [0.5, 1.0, 0.3])
def test_each_target_poisoned_at_its_rate_with_its_own_trigger_only(tiny_splits, rate):
    train, targets = tiny_splits.train, [1, 4, 7]
    p = _attack().poison(train, targets, rate, seed=0)
    assert set(p.triggers) == set(targets)
    assert len({p.triggers[t].tobytes() for t in targets}) == 3  # a trigger per target
    for t in targets:
        mine = p.poison_target == t
        assert mine.sum() == int(rate * (train.labels == t).sum())
        assert (train.labels[mine] == t).all()
        # the same poisons, corners and pixels as single-target HTBA on that target
        alone = HTBA(HTBAConfig(trigger_size=6)).poison(train, [t], rate, seed=0)
        np.testing.assert_array_equal(mine, alone.poison_mask)
        np.testing.assert_array_equal(p.boxes[mine], alone.boxes[mine])
        np.testing.assert_array_equal(p.train.images[mine], alone.train.images[mine])
    np.testing.assert_array_equal(p.poison_mask, p.poison_target >= 0)
    assert (p.boxes[~p.poison_mask] == -1).all()
    np.testing.assert_array_equal(p.train.images[~p.poison_mask], train.images[~p.poison_mask])
    for i in p.poison_indices:  # exactly one trigger per image: its own box, nothing outside
        x, y, w, h = p.boxes[i]
        assert (w, h) == (6, 6)
        np.testing.assert_array_equal(p.train.images[i, y:y + h, x:x + w], p.triggers[p.poison_target[i]])
        outside = np.ones(p.train.images.shape[1:3], dtype=bool)
        outside[y:y + h, x:x + w] = False
        np.testing.assert_array_equal(p.train.images[i][outside], train.images[i][outside])


def test_patched_set_per_target_uses_that_targets_trigger(tiny_splits):
    attack = _attack()
    p = attack.poison(tiny_splits.train, [2, 5], 1.0, seed=0)
    for t in (2, 5):
        patched = attack.patch_val(tiny_splits.val, t, seed=0)
        assert len(patched.images) == len(tiny_splits.val)
        for img, (x, y, w, h) in zip(patched.images, patched.boxes):
            np.testing.assert_array_equal(img[y:y + h, x:x + w], p.triggers[t])
    assert not np.array_equal(p.triggers[2], p.triggers[5])


def test_trigger_files_per_target(tiny_splits, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    with pytest.raises(BenchError, match="would share the trigger file"):
        _attack(trigger=str(tmp_path / "a.png")).poison(tiny_splits.train, [0, 1], 1.0, seed=0)
    p = _attack(trigger_files={"0": str(tmp_path / "a.png"), "1": str(tmp_path / "b.png")}).poison(
        tiny_splits.train, [0, 1], 1.0, seed=0)
    assert not np.array_equal(p.triggers[0], p.triggers[1])


def test_retrieval_curve_on_a_hand_made_example(tmp_path):
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    windows = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 20, 20], [-1, -1, -1, -1]])
    boxes = np.array([[0, 0, 10, 10],   # exact: IoU 1, CR 1
                      [5, 0, 10, 10],   # half overlap: IoU 50 / 150, CR 1/2
                      [-1, -1, -1, -1],  # clean image: not scored
                      [5, 5, 10, 10],   # inside a larger window: IoU 100 / 400, CR 1
                      [0, 0, 4, 4]])    # poison without a located window: not scored
    curve = retrieval_curve(scores, windows, boxes, ks=(1, 2, 3, 4, 5, 6))
    expected_iou = [100, 100 * (1 + 1 / 3) / 2, 100 * (1 + 1 / 3) / 2, 100 * (1 + 1 / 3 + 1 / 4) / 3,
                    100 * (1 + 1 / 3 + 1 / 4) / 3, math.nan]
    expected_cr = [100, 75, 75, 100 * 2.5 / 3, 100 * 2.5 / 3, math.nan]
    np.testing.assert_allclose(curve["iou"], expected_iou)
    np.testing.assert_allclose(curve["catch_rate"], expected_cr)
    assert curve["n_boxed"] == [1, 2, 2, 3, 3, 0] and curve["k"] == [1, 2, 3, 4, 5, 6]
    # a trigger without a box (spectral) is not applicable at every k, not zero
    none = retrieval_curve(scores, windows, np.full((5, 4), -1), ks=(1, 5))
    assert all(math.isnan(v) for v in none["iou"] + none["catch_rate"])
    assert all(math.isnan(v) for v in retrieval_curve(scores, None, boxes, ks=(1, 5))["iou"])
    # saving: a CSV per defense, one plot over all of them
    save_retrieval(tmp_path, "poisoncam", curve)
    plot = save_retrieval(tmp_path, "patchsearch", none, title="test")
    assert plot == tmp_path / "retrieval.png" and plot.stat().st_size > 1000
    saved = pd.read_csv(tmp_path / "poisoncam_retrieval.csv")
    np.testing.assert_allclose(saved["iou"], expected_iou)


def test_per_target_detection_scores_each_pair_on_its_own_poisons():
    poison_target = np.array([0, 0, 1, 1, 2, 2, -1, -1])
    remove = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)  # both of target 0, one of target 1, a clean image
    scores = np.arange(8, 0, -1, dtype=float)
    boxes = np.where(poison_target[:, None] >= 0, np.array([[0, 0, 8, 8]]), -1)
    windows = np.tile([[0, 0, 8, 8]], (8, 1))
    windows[poison_target == 1] = [4, 0, 8, 8]  # target 1's trigger only half found: IoU 1/3, CR 1/2
    per_target = per_target_detection(remove, scores, windows, boxes, poison_target)
    assert sorted(per_target) == [0, 1, 2]
    assert [per_target[t]["recall"] for t in (0, 1, 2)] == [100.0, 50.0, 0.0]
    np.testing.assert_allclose([per_target[t]["iou"] for t in (0, 1, 2)], [100.0, 100 / 3, 100.0])
    np.testing.assert_allclose([per_target[t]["catch_rate"] for t in (0, 1, 2)], [100.0, 50.0, 100.0])
    single = np.where(poison_target >= 0, 0, -1)
    assert per_target_detection(remove, scores, windows, boxes, single) == {}  # one target: the whole-set row


# a light PoisonCAM: few masks, a 10-image flip set, one small poison classifier for 10 iterations
LIGHT_POISONCAM = ["defense.poisoncam.num_masks=8", "defense.poisoncam.flip_set_size=10",
                   "defense.poisoncam.classifier_iterations=10", "defense.poisoncam.classifier_models=1",
                   "defense.poisoncam.classifier_width=4", "defense.poisoncam.classifier_batch_size=32",
                   "defense.poisoncam.classifier_eval_every=5", "defense.poisoncam.min_flip_fraction=0"]


@pytest.mark.slow
def test_multi_target_and_spectral_in_the_grid(tmp_path, tiny_args, capsys):
    argv = ["run", "--attack", "multi_target,spectral", "--defense", "none,poisoncam", "--no-reference", *tiny_args,
            "--set", "attack.multi_target.n_targets=2"]
    for item in LIGHT_POISONCAM:
        argv += ["--set", item]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "multi_target" in out and "spectral" in out and "PoisonCAM" in out
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name != "cache")
    results = pd.read_csv(run_dir / "results.csv")
    multi = results[results["attack"] == "multi_target"]
    assert set(multi["targets"]) == {"0+1"} and sorted(multi["target"].unique()) == [0, 1]
    assert len(multi) == 4  # 2 targets x (none, poisoncam)
    assert multi["n_poison"].eq(48).all()  # 24 images of each target at rate 1.0
    spectral = results[results["attack"] == "spectral"]
    assert list(spectral["target"]) == [0, 0] and spectral["n_poison"].eq(24).all()
    cam = results[results["defense"] == "poisoncam"]
    for attack, folder in (("multi_target", "multi_target_t0+1_r1_s0"), ("spectral", "spectral_t0_r1_s0")):
        rows = cam[cam["attack"] == attack]
        cell = run_dir / "figures" / folder
        assert (cell / "retrieval.png").is_file()
        assert rows["figures"].str.contains(f"{folder}/retrieval.png", regex=False).all()
        curve = pd.read_csv(cell / "poisoncam_retrieval.csv").set_index("k")
        assert list(curve.index) == [5, 10, 20, 50, 100, 500]
        if attack == "spectral":  # no box: not applicable at every k, not zero
            np.testing.assert_array_equal(rows["iou"], curve.loc[20, "iou"])  # the table's IoU is the k = 20 point
            assert curve[["iou", "catch_rate"]].isna().to_numpy().all() and (curve["n_boxed"] == 0).all()
            assert rows[["iou", "catch_rate"]].isna().to_numpy().all()
        else:  # 48 of 240 images carry a box: some of the top 100 do, whatever the (1-epoch) ranking
            assert curve.loc[100, "n_boxed"] > 0
            assert 0 < curve.loc[100, "iou"] <= 100 and 0 < curve.loc[100, "catch_rate"] <= 100
            # each target's row has its own recall; with equal counts they average to the whole-set recall
            removed = rows["removed"].iloc[0]
            assert rows["removed"].eq(removed).all() and rows["recall"].between(0, 100).all()
            caught = rows["precision"].iloc[0] * removed / 100
            assert rows["recall"].mean() == pytest.approx(100 * caught / 48)
        assert np.isnan(curve.loc[500, "iou"])  # k above the 240 images
