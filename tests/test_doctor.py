"""`bench doctor`: environment, measured projection, stage counts; `bench doctor --gpu-check` on a CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from benchsuite.cli import main
from benchsuite.core.clustering import Clusters, centre_index
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.locators import Located
from benchsuite.poison_search.search import SearchConfig, iterative_search, survivors
from benchsuite.settings.config import apply_override, build_config, read_preset
from benchsuite.settings.registry import get_registry
from benchsuite.tools import gpu_check
from benchsuite.tools.projection import Measurements, data_shape, project, scored_images
from benchsuite.tools.throughput import Rate, timed_rate

TINY = ["--set", "ssl.backbone_options.width=8", "--set", "train.batch_size=16", "--seconds", "0.5"]


def _config(preset: str, *overrides: str):
    data = read_preset(preset)
    for item in overrides:
        apply_override(data, item)
    return build_config(data)


def test_doctor_prints_the_environment_and_a_projection(tmp_path, capsys):
    assert main(["doctor", "--preset", "smoke", "--defense", "poisoncam,patchsearch", "--out", str(tmp_path),
                 *TINY]) == 0
    out = capsys.readouterr().out
    for item in ("Environment", "Python", "torch", "CUDA", "faiss", "NCCL", "CPU cores", "RAM", "disk",
                 "SSL training step", "encoder forward", "poison classifier step"):
        assert item in out, item
    for stage in ("pretrain: poisoned encoder", "pretrain: clean reference", "search: poisoncam",
                  "search: patchsearch", "poison classifier: poisoncam", "retrain: patchsearch", "probe (linear)",
                  "total"):
        assert stage in out, stage
    assert "5,000 train / 1,000 val images at 32 px" in out
    assert "stage cache: about" in out and "training set is held in RAM" in out


def test_doctor_refuses_bad_input_before_measuring(capsys):
    assert main(["doctor", "--seconds", "0"]) == 2
    assert "error: --seconds 0.0 must be > 0" in capsys.readouterr().err
    assert main(["doctor", "--defense", "nope"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown defense 'nope'" in err and "measuring" not in err


def test_projection_follows_the_code_counts():
    """Known rates in, the stage durations the pipeline's counts give out."""
    config = _config("smoke", "grid.defenses=['poisoncam', 'sslcleanse', 'icutmix']", "grid.seeds=[0, 1]")
    registry = get_registry()
    data = data_shape(config, registry)
    m = Measurements(ssl_step=Rate(100.0, 256, 3), forward=Rate(1000.0, 512, 3), classifier_step=Rate(50.0, 64, 3),
                     training_step={"icutmix": Rate(40.0, 256, 3)}, kmeans_s_per_unit=0.0, probe_s=0.5,
                     feature_dim=256)
    stages = {s.name: s for s in project(config, registry, data, m)}
    epoch_images = (5000 // 256) * 256
    assert stages["pretrain: poisoned encoder"].runs == 2  # one cell per seed
    assert stages["pretrain: poisoned encoder"].seconds_each == pytest.approx(15 * epoch_images / 100.0)
    assert stages["pretrain: clean reference"].runs == 2
    assert stages["retrain: poisoncam"].seconds_each == pytest.approx(15 * epoch_images / 100.0)
    assert stages["pretrain: icutmix"].seconds_each == pytest.approx(15 * epoch_images / 40.0)  # its own step rate
    # PoisonCAM at smoke: 50 clusters of 100, s = 2, r = 25 %; each scored image costs 64 masks + 50 flips
    scored = scored_images(5000, 50, 2, lambda c: survivors(c, SearchConfig(2, 0.25, "sum", "into", 50, True)))
    assert stages["search: poisoncam"].seconds_each == pytest.approx(scored * (64 + 50) / 1000.0)
    assert stages["poison classifier: poisoncam"].seconds_each == pytest.approx(3 * (400 * 64 + 5000 / 3) / 50.0)
    # SSL-Cleanse judges the poisoned encoder of each cell and the clean encoder of each seed
    assert stages["inspect: sslcleanse"].runs == 4
    assert stages["mitigate: sslcleanse"].runs == 2


def test_timed_rate_grows_the_batch_within_the_budget():
    """A fake clock: a step of b images takes 0.01 b s (+ 1 s at batch 2, the warm-up's one-time cost)."""
    now = [0.0]

    def step(batch: int) -> None:
        now[0] += 0.01 * batch + (1.0 if batch == 2 else 0.0)

    rate = timed_rate(step, 64, 10.0, torch.device("cpu"), start_batch=8, clock=lambda: now[0])
    assert (rate.batch, rate.images_per_s) == (64, pytest.approx(100.0)) and rate.steps > 2
    assert now[0] <= 10.0 + 0.64  # at most one step past the budget
    now[0] = 0.0
    slow = timed_rate(lambda b: step(b * 100), 64, 1.0, torch.device("cpu"), start_batch=8, clock=lambda: now[0])
    assert (slow.batch, slow.steps, slow.images_per_s) == (8, 1, pytest.approx(1.0))  # the warm-up step is all


def test_scored_images_counts_what_the_search_scores():
    """The projection's count of searched images equals what ``iterative_search`` scores on equal clusters."""
    n, k, side = 240, 12, 8
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    assignments = np.arange(n) % k
    centres = rng.standard_normal((k, 4)).astype(np.float32)
    index, _ = centre_index(centres, use_gpu=False)
    clusters = Clusters(centres, assignments, np.zeros(n, np.float32), index)
    runner = EncoderRunner(nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, 4)), "cpu", batch_size=64)

    class Corner:
        name = "corner"

        def locate(self, runner, imgs, clusters, targets, window):
            return Located(np.tile([0, 0, window, window], (len(imgs), 1)), np.zeros((len(imgs), side, side)))

    for samples, prune, at_least_one in ((2, 0.25, True), (3, 0.5, True), (2, 0.25, False)):
        cfg = SearchConfig(samples, prune, "max", "into", 6, at_least_one)
        result = iterative_search(runner, images, clusters, Corner(), 4, cfg, seed=0)
        expected = scored_images(n, k, samples, lambda c, cfg=cfg: survivors(c, cfg))
        assert int(result.scored.sum()) == expected, (samples, prune, at_least_one)


def test_data_shape_of_the_paper_preset_without_its_data():
    shape = data_shape(_config("paper"), get_registry())
    assert (shape.train, shape.val, shape.image_size, shape.classes) == (126_689, 5_000, 224, 100)
    assert "ImageNet-100" in shape.source


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["doctor", "--gpu-check", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA" in lines[0]
    assert not (tmp_path / "gpu-check").exists()


def test_gpu_check_functions_run_on_cpu_and_write_the_report(tmp_path):
    names = ["ssl step: simclr + i-CutMix", "feature extraction", "faiss k-means", "PoisonCAM masked scoring",
             "Grad-CAM (CNN)", "Grad-CAM (ViT)", "flip test", "poison classifier", "SSL-Cleanse inversion",
             "tiny cell, CUDA vs CPU"]
    assert set(names) <= set(gpu_check.checks())
    assert gpu_check.gpu_check(tmp_path, "cpu", names) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {**dict.fromkeys(names, "ok"), "tiny cell, CUDA vs CPU": "skipped"}
    assert report["device"] == "cpu" and report["failed"] == 0
    assert "CPU fallback" in next(c["detail"] for c in report["checks"] if c["name"] == "faiss k-means")
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| Grad-CAM (ViT) | ok |" in markdown


def test_gpu_check_reports_a_failing_check(tmp_path, monkeypatch):
    def broken(inp):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(gpu_check, "features", broken)
    assert gpu_check.gpu_check(tmp_path, "cpu", ["feature extraction"]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"][0]["status"] == "failed" and "illegal memory access" in report["checks"][0]["detail"]


def test_devices_agree_statistically():
    assert gpu_check.agree([80.0, 82.0, 81.0], [79.0, 84.0, 80.0])[0]
    assert not gpu_check.agree([80.0, 82.0, 81.0], [60.0, 62.0, 61.0])[0]
