"""Cost of every stage (issue #15 point 4): meters, forwards counted, kept by the cache, columns, table, report."""

from __future__ import annotations

import json
import math
import mmap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from benchsuite.cli import main, print_tables
from benchsuite.core import cost
from benchsuite.core.cache import StageCache
from benchsuite.core.clustering import kmeans
from benchsuite.core.cost import COST_COLUMNS, StageCost, row_costs
from benchsuite.poison_search import EncoderRunner, FlipTest, MaskingLocator
from benchsuite.reporting.publish import leaderboard_rows
from benchsuite.reporting.report import write_report
from benchsuite.reporting.tables import cost_frame


def _stage(wall: float, forwards: int = 0, rss: float = 100.0, cuda: float | None = None) -> StageCost:
    return StageCost(wall_s=wall, cpu_s=wall / 2, peak_rss_mb=rss, peak_cuda_mb=cuda, forward_images=forwards,
                     device="cpu" if cuda is None else "cuda")


def test_a_stage_computed_inside_another_is_not_counted_twice():
    with cost.measure("detect", "outer") as outer:
        cost.count_forwards(5)
        with cost.measure("features", "inner"):
            cost.count_forwards(7)
            time.sleep(0.3)
            inner = cost.current("features", "inner")
        own = cost.current("detect", "outer")
    assert outer.stage == "detect"
    assert inner.forward_images == 7 and own.forward_images == 5
    assert own.wall_s < 0.3 <= inner.wall_s  # the inner sleep is the inner stage's alone
    assert inner.device == own.device == "cpu" and inner.peak_cuda_mb is None
    assert cost.current("detect", "outer") is None  # closed


def test_peak_host_memory_is_the_stage_own_peak():
    with cost.measure("big", "a"):
        # 160 MB of touched pages in a private mapping, given back on close whatever malloc's thresholds
        # (bench raises them, so a freed numpy block would stay in the process)
        block = mmap.mmap(-1, 160 * 2**20)
        block.write(b"\x01" * len(block))
        time.sleep(4 * cost.SAMPLE_S)  # the sampler sees it
        block.close()
        big = cost.current("big", "a")
    with cost.measure("small", "b"):
        time.sleep(2 * cost.SAMPLE_S)
        small = cost.current("small", "b")
    # a process-lifetime peak (ru_maxrss) would give the second stage the first one's peak
    assert big.peak_rss_mb - small.peak_rss_mb > 100


class FakeCuda:
    """torch.cuda's memory counters, for the CUDA bookkeeping on a machine without a GPU."""

    def __init__(self) -> None:
        self.allocated = self.peak = 0

    def memory_allocated(self) -> int:
        return self.allocated

    def max_memory_allocated(self) -> int:
        return self.peak

    def reset_peak_memory_stats(self) -> None:
        self.peak = self.allocated

    def alloc(self, mb: int) -> None:
        self.allocated += mb * 2**20
        self.peak = max(self.peak, self.allocated)


def test_cuda_peaks_of_nested_stages_and_a_cpu_stage_after_them(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setattr(cost, "_cuda", lambda: cuda)
    with cost.measure("detect", "outer"):
        cuda.alloc(300)
        cuda.alloc(-200)  # 100 MB stay resident
        with cost.measure("features", "inner"):  # resets the peak counter: the outer stage keeps its 300
            cuda.alloc(100)
            cuda.alloc(-100)
            inner = cost.current("features", "inner")
        outer = cost.current("detect", "outer")
    with cost.measure("poison", "cpu-only"):  # the 100 MB still allocated, nothing new
        after = cost.current("poison", "cpu-only")
    assert (inner.peak_cuda_mb, outer.peak_cuda_mb) == (200, 300) and inner.device == outer.device == "cuda"
    assert after.peak_cuda_mb is None and after.device == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_stage_records_its_peak():
    with cost.measure("features", "gpu"):
        block = torch.ones(64 * 2**20 // 4, device="cuda")  # 64 MB
        del block
        spent = cost.current("features", "gpu")
    assert spent.device == "cuda" and spent.peak_cuda_mb >= 64


def test_a_cached_stage_keeps_the_cost_it_had(tmp_path):
    computed = []

    def compute():
        computed.append(1)
        cost.count_forwards(42)
        time.sleep(0.05)
        cache.mark_done("detect", "k", {"removed": 3})
        return "result"

    cache = StageCache(tmp_path)
    assert cache.run("detect", "k", lambda: "loaded", compute) == "result"
    first = cache.stage_cost("detect", "k")
    assert first.forward_images == 42 and first.wall_s >= 0.05
    assert json.loads((tmp_path / "detect" / "k" / "DONE").read_text())["removed"] == 3
    again = StageCache(tmp_path)
    assert again.run("detect", "k", lambda: "loaded", compute) == "loaded" and computed == [1]
    assert again.stage_cost("detect", "k") == first


def test_a_stage_cached_before_costs_has_none(tmp_path):
    cache = StageCache(tmp_path)
    (tmp_path / "detect" / "old").mkdir(parents=True)
    (tmp_path / "detect" / "old" / "DONE").write_text('{"removed": 1}')
    assert cache.stage_cost("detect", "old") is None
    row = row_costs([None], [_stage(2.0)], filtered_images=10)
    assert math.isnan(row["cost_defense_s"]) and math.isnan(row["cost_ms_per_image"])
    assert row["cost_pretrain_s"] == 2.0


def test_row_costs_of_a_filter_and_of_a_model_defense():
    row = row_costs([_stage(3.0, forwards=900, rss=300, cuda=50.0)], [_stage(10.0, rss=500, cuda=800.0)],
                    filtered_images=600)
    assert row["cost_defense_s"] == 3.0 and row["cost_cpu_s"] == 1.5 and row["cost_pretrain_s"] == 10.0
    assert row["cost_ms_per_image"] == 5.0 and row["cost_forward_images"] == 900
    assert row["cost_peak_rss_mb"] == 500 and row["cost_peak_cuda_mb"] == 800.0 and row["cost_device"] == "cuda"
    model = row_costs([_stage(1.0), _stage(2.0, forwards=4)], [])
    assert model["cost_defense_s"] == 3.0 and math.isnan(model["cost_forward_images"])
    assert math.isnan(model["cost_ms_per_image"]) and math.isnan(model["cost_pretrain_s"])
    assert set(model) == set(COST_COLUMNS) and math.isnan(model["cost_peak_cuda_mb"])


def _tiny_search():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images = np.random.default_rng(0).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    runner = EncoderRunner(encoder, "cpu", batch_size=64)
    features = runner.embed(runner.unit(images))
    return runner, images, kmeans(features, 3, seed=0, niter=5)


def test_the_search_counts_every_encoder_forward():
    runner, images, clusters = _tiny_search()
    with cost.measure("detect", "forwards"):
        runner.embed(runner.unit(images))
        assert cost.current("detect", "forwards").forward_images == 24
        MaskingLocator(num_masks=6, seed=0).locate(runner, images[:5], clusters, clusters.assignments[:5], 8)
        assert cost.current("detect", "forwards").forward_images == 24 + 5 * 6  # B masked copies per image
        flip = FlipTest(runner, images, clusters, np.arange(4), "into", seed=0)
        flip.score(images[:3, :8, :8], clusters.assignments[:3])
        assert cost.current("detect", "forwards").forward_images == 24 + 30 + 3 * 4  # each patch on F flip images


def _run_dir(out):
    (run,) = [p for p in out.iterdir() if p.name != "cache"]
    return run


def test_cost_columns_table_report_and_leaderboard(tmp_path, tiny_args, capsys):
    argv = ["run", "--defense", "none", "--no-reference", *tiny_args]
    assert main(argv) == 0
    run = _run_dir(tmp_path / "runs")
    first = pd.read_csv(run / "results.csv")
    assert first["cost_pretrain_s"].gt(0).all() and first["cost_peak_rss_mb"].gt(0).all()
    assert first["cost_device"].eq("cpu").all() and first["cost_defense_s"].isna().all()  # "none" has no stages
    for cell in (run / "cells").glob("*.json"):  # the rerun goes through the (cached) stages
        cell.unlink()
    assert main(argv) == 0
    again = pd.read_csv(run / "results.csv")
    pd.testing.assert_frame_equal(first[COST_COLUMNS], again[COST_COLUMNS])  # loaded stages keep their cost
    capsys.readouterr()
    assert main(["table", str(run), "--layout", "cost", "--format", "csv"]) == 0
    table = capsys.readouterr().out
    assert "w/o Defense" in table and "Pretraining (s)" in table
    page = write_report(run).read_text()
    assert "Cost per defense" in page and (run / "cost_summary.png").is_file()
    published = leaderboard_rows(run)
    costs = published[published["metric_set"] == "cost"]
    assert len(costs) == len(first) and costs["cost_pretrain_s"].tolist() == first["cost_pretrain_s"].tolist()


def test_cost_layout_over_seeds_and_devices(capsys):
    frame = pd.DataFrame({"dataset": "d", "attack": "htba", "rate": 0.5, "target": 0, "seed": [0, 1, 0],
                          "defense": ["poisoncam", "poisoncam", "none"], "cost_defense_s": [2.0, 4.0, None],
                          "cost_cpu_s": [1.0, 1.0, None], "cost_ms_per_image": [1.0, 3.0, None],
                          "cost_forward_images": [1000, 3000, None], "cost_pretrain_s": [5.0, 5.0, 6.0],
                          "cost_peak_rss_mb": [100.0, 300.0, 50.0], "cost_peak_cuda_mb": [None, None, None],
                          "cost_device": ["cpu", "cuda", "cpu"]})
    table = cost_frame(frame).droplevel(0, axis=1).set_index("Defense")
    assert table.loc["PoisonCAM", "Defense (s)"] == "3.0 ± 1.4 (n=2)"
    assert table.loc["PoisonCAM", "Encoder forwards"] == "2000 ± 1414 (n=2)"
    assert table.loc["PoisonCAM", "Device"] == "cpu, cuda" and table.loc["w/o Defense", "Defense (s)"] == "-"
    assert cost_frame(frame.drop(columns=COST_COLUMNS)) is None  # a results file from before costs
    for fmt in ("rich", "markdown", "latex", "csv"):
        print_tables(frame, fmt, ("cost",))
        assert "PoisonCAM" in capsys.readouterr().out
