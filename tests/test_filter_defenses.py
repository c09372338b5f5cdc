"""PatchSearch and PoisonCAM end to end on a planted backdoor, a clean set and a blind encoder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchsuite.api import Detection, config_from_options
from benchsuite.defenses.patchsearch import PatchSearch, PatchSearchConfig
from benchsuite.defenses.patchsearch import benchsuite_defenses as patchsearch_plugin
from benchsuite.defenses.poisoncam import PoisonCAM, PoisonCAMConfig
from benchsuite.defenses.poisoncam import benchsuite_defenses as poisoncam_plugin
from benchsuite.errors import BenchError
from benchsuite.eval.features import extract_features
from benchsuite.pipeline import DefenseContext
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
