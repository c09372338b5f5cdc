"""PatchSearch and PoisonCAM end to end on a planted backdoor, a clean set and a blind encoder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchsuite.api import DefenseContext, Detection, config_from_options
from benchsuite.core.errors import BenchError
from benchsuite.defenses.patchsearch import PatchSearch, PatchSearchConfig
from benchsuite.defenses.patchsearch import benchsuite_defenses as patchsearch_plugin
from benchsuite.defenses.poisoncam import PoisonCAM, PoisonCAMConfig
from benchsuite.defenses.poisoncam import benchsuite_defenses as poisoncam_plugin
from benchsuite.eval.features import extract_features
from benchsuite.poison_search import box_iou
from tests.fixtures_planted import PooledOnly, planted_data, planted_encoder, single_thread

# small and fast: 20 clusters, a 10 px window (the planted trigger's size), one small classifier
SMALL = dict(num_clusters=20, window=10, flip_set_size=40, top_k=20, classifier_models=1, classifier_width=8,
             classifier_stem_stride=2, classifier_lr=0.03, classifier_batch_size=64, classifier_iterations=300,
             pictures=4)
DEFENSES = {"patchsearch": (PatchSearch, PatchSearchConfig(**SMALL)),
            "poisoncam": (PoisonCAM, PoisonCAMConfig(num_masks=64, **SMALL))}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def context(images: np.ndarray, encoder: torch.nn.Module, num_classes: int, workdir: Path) -> DefenseContext:
    return DefenseContext(images, encoder, extract_features(encoder, images), num_classes, 0, torch.device("cpu"),
                          workdir)


def run(name: str, images: np.ndarray, encoder: torch.nn.Module, workdir: Path, **changes) -> Detection:
    cls, cfg = DEFENSES[name]
    return cls(replace(cfg, **changes)).detect(context(images, encoder, 10, workdir))


@pytest.fixture(scope="module")
def planted():
    p = planted_data()
    return p, planted_encoder(p)


@pytest.fixture(scope="module", params=list(DEFENSES))
def detected(request, planted, tmp_path_factory):
    p, encoder = planted
    workdir = tmp_path_factory.mktemp(request.param)
    return request.param, run(request.param, p.images, encoder, workdir), workdir


def test_filter_finds_the_poisons(planted, detected):
    p, _ = planted
    name, det, workdir = detected
    mask = p.poisoning.poison_mask
    assert det.scores.shape == det.remove.shape == mask.shape and det.windows.shape == (len(mask), 4)
    top = np.argsort(-det.scores, kind="stable")[:20]
    assert mask[top].mean() >= 0.9, f"{name}: top-20 accuracy {mask[top].mean():.2f}"
    recall = (det.remove & mask).sum() / mask.sum()
    assert recall >= 0.95, f"{name}: recall {recall:.2f}"
    assert det.remove.sum() <= 4 * mask.sum()  # precision stays in the papers' range (about 50 %)
    assert det.extras["trigger_found"] and det.extras["window"] == 10
    iou = box_iou(det.windows[top], p.poisoning.boxes[top])
    assert (iou >= 0.5).mean() >= 0.6


def test_filter_saves_pictures(detected):
    name, det, workdir = detected
    names = sorted(path.name for path in workdir.iterdir())
    assert "top_patches.png" in names and any(n.startswith("attention_") for n in names)
    assert all(Path(path).exists() for path in det.extras["pictures"])


@pytest.mark.parametrize("name", list(DEFENSES))
def test_clean_dataset_loses_few_images(name, tmp_path):
    p = planted_data(rate=0.01)  # int(0.01 x 40) = 0 poisons
    assert not p.poisoning.poison_mask.any()
    det = run(name, p.images, planted_encoder(p), tmp_path, num_masks=32) if name == "poisoncam" else \
        run(name, p.images, planted_encoder(p), tmp_path)
    assert det.remove.mean() <= 0.05


@pytest.mark.parametrize("name", list(DEFENSES))
def test_blind_encoder_is_not_defended(name, tmp_path):
    """The negative control: an encoder that ignores the trigger gives nothing to find."""
    p = planted_data()
    changes = dict(num_masks=32) if name == "poisoncam" else {}
    det = run(name, p.images, planted_encoder(p, sensitive=False), tmp_path, **changes)
    mask = p.poisoning.poison_mask
    assert (det.remove & mask).sum() / mask.sum() < 0.5
    assert mask[np.argsort(-det.scores, kind="stable")[:20]].mean() < 0.5


def test_bad_inputs_give_one_line_errors(planted, tmp_path):
    p, encoder = planted
    images = p.images[:60]
    for changes, match in [(dict(window=40), "larger than the 32px"), (dict(top_k=31), "top_k=31"),
                           (dict(num_clusters=61), "61 clusters on 60 images"), (dict(window="big"), "auto")]:
        for name in DEFENSES:
            with pytest.raises(BenchError, match=match) as err:
                run(name, images, encoder, tmp_path, **changes)
            assert "\n" not in str(err.value)
    with pytest.raises(BenchError, match="spatial"):
        run("patchsearch", images, PooledOnly(encoder), tmp_path, num_clusters=4, top_k=5)


def test_poisoncam_runs_on_an_encoder_without_spatial_features(planted, tmp_path):
    p, encoder = planted
    images = p.images[:60]
    det = run("poisoncam", images, PooledOnly(encoder), tmp_path, num_clusters=4, top_k=5, num_masks=8,
              classifier_iterations=5)
    assert det.remove.shape == (60,) and np.isfinite(det.scores).any()


def test_plugins_and_configs():
    assert patchsearch_plugin() == [PatchSearch] and poisoncam_plugin() == [PoisonCAM]
    for cls in (PatchSearch, PoisonCAM):
        assert cls.kind == "filter"
        cfg = config_from_options(cls.Config, {"window": "auto", "num_clusters": 30}, cls.name)
        assert cfg.window == "auto" and cfg.num_clusters == 30
        with pytest.raises(BenchError, match="unknown option"):
            config_from_options(cls.Config, {"windw": 3}, cls.name)
    assert PatchSearchConfig().cluster_score == "max" and PoisonCAMConfig().cluster_score == "sum"


def test_filter_judges_new_images_as_it_judged_the_training_set(planted, detected):
    """The trained ensemble is handed back (``Detection.flag``): on the training images it repeats the removal
    mask, and on the pasting control (clean images with a foreign square) it gives a flag rate in [0, 100]."""
    from benchsuite.eval.detection import control_flag_rate, control_images

    p, _ = planted
    name, det, _ = detected
    assert det.flag is not None, name
    np.testing.assert_array_equal(det.flag(p.images), det.remove)
    poisoning = p.poisoning
    control = control_images(p.images, poisoning.train.labels, poisoning.poison_target, poisoning.boxes, seed=0)
    assert 0.0 <= control_flag_rate(det.flag, control) <= 100.0


def test_filter_that_finds_no_trigger_flags_no_new_image(planted, tmp_path):
    p, encoder = planted
    det = run("patchsearch", p.images[:60], encoder, tmp_path, num_clusters=4, top_k=5, min_flip_fraction=1.01)
    assert not det.extras["trigger_found"] and not det.remove.any()
    assert not det.flag(p.images[:7]).any() and det.flag(p.images[:7]).shape == (7,)
    # what the guard tested is kept: the best candidate's flips over the flip set, below the guard's 101 %
    assert 0.0 <= det.extras["best_flip_share"] < 1.01 and det.extras["guard"] == 1.01
    assert det.n_scored == det.extras["scored"] <= 60


def test_the_official_code_mode_has_no_no_trigger_guard(planted, tmp_path):
    """Neither paper nor code has the guard: under compat = "code" a filter goes on to its classifier."""
    p, encoder = planted
    det = run("patchsearch", p.images[:60], encoder, tmp_path, num_clusters=4, top_k=5, min_flip_fraction=1.01,
              compat="code", classifier_iterations=5)
    assert det.extras["trigger_found"] and det.extras["guard"] == 0.0 and "classifier_f1" in det.extras


@pytest.mark.slow
def test_grid_reports_the_pasting_control_and_poisoncam_window_accuracy(tmp_path, tiny_args, capsys, monkeypatch):
    import pandas as pd

    from benchsuite.cli import main
    from benchsuite.core.cache import StageCache
    from benchsuite.core.console import console
    from benchsuite.reporting.tables import table2_frame

    argv = ["run", "--defense", "poisoncam", "--no-reference", "--removal-control", *tiny_args]
    for item in ("num_masks=8", "flip_set_size=10", "classifier_iterations=10", "classifier_models=1",
                 "classifier_width=4", "classifier_batch_size=32", "classifier_eval_every=5", "min_flip_fraction=0"):
        argv += ["--set", f"defense.poisoncam.{item}"]
    assert main(argv) == 0
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name != "cache")
    results = pd.read_csv(run_dir / "results.csv").set_index("defense")
    row = results.loc["poisoncam"]
    assert 0.0 <= row["control_flag_rate"] <= 100.0
    for column in ("top20_window_acc", "top50_window_acc", "top100_window_acc", "iou_all", "catch_rate_all"):
        assert 0.0 <= row[column] <= 100.0, column
    assert pd.isna(results.loc["none", "control_flag_rate"])
    table = table2_frame(results.reset_index())
    titles = [title for group, title in table.columns if group == "PoisonCAM"]
    assert titles.index("Control flag") == titles.index("Recall") + 1  # shown beside recall

    # the removal control: the same recipe retrained after removing as many images at random
    assert 0.0 <= row["random_removal_patched_asr"] <= 100.0 and 0.0 <= row["random_removal_clean_acc"] <= 100.0
    assert 0.0 <= row["random_removal_recall"] <= 100.0
    assert pd.isna(results.loc["none", "random_removal_patched_asr"])
    cache = StageCache(tmp_path / "runs" / "cache")
    retrained = {cache.meta("pretrain", d.name)["label"]: cache.meta("pretrain", d.name)["images"]
                 for d in (tmp_path / "runs" / "cache" / "pretrain").iterdir() if (d / "DONE").is_file()}
    control = [n for label, n in retrained.items() if label.startswith("retrain random removal")]
    assert control == [row["n_train"]] == [n for label, n in retrained.items() if label.startswith("retrain poisoncam")]
    assert "Rand. rem. Patched ASR" in titles
    plain = table2_frame(results.reset_index().drop(columns=[c for c in results if c.startswith("random_removal")]))
    assert "Rand. rem. Patched ASR" not in [title for _, title in plain.columns]
    monkeypatch.setattr(console, "width", 300)  # one line a cell
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    assert "retrain cached, random removal cached" in capsys.readouterr().err
