"""Throughput of the filter defenses' inner loops against plain encoder forwards (pytest-benchmark).

Run: ``make bench`` (not collected by the default test run): the benchmarks with ``--benchmark-only``,
then ``test_poisoncam_within_1_5x_of_plain_forwards``, the asserted bound, which makes ``make bench`` fail.
Each benchmark does FORWARDS encoder forwards at batch BATCH; ``extra_info`` holds forwards/s.
On CPU torch runs on one thread: on the shared 2-core machine two threads are several times slower.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchsuite.core.clustering import kmeans
from benchsuite.data.synthetic import make_synthetic
from benchsuite.eval.features import extract_features
from benchsuite.nets.backbones import small_resnet
from benchsuite.poison_search import EncoderRunner, FlipTest, GradCamLocator, MaskingLocator, flip_set
from tests.fixtures_planted import single_thread

BATCH = 256
MASKS = 64  # B
IMAGES = 32  # images located / patches scored per call
FORWARDS = IMAGES * MASKS
WINDOW = 9


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    if torch.cuda.is_available():
        yield
        return
    with single_thread():
        yield


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = small_resnet(32, depth=18, width=16, stem_stride=2).eval()
    images = make_synthetic(num_train_per_class=20, num_val_per_class=1, seed=0).train.images
    clusters = kmeans(extract_features(encoder, images, device=device), 20, seed=0)
    return EncoderRunner(encoder, device, BATCH), images, clusters


def _record(benchmark, forwards: int) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["forwards_per_s"] = forwards / benchmark.stats.stats.mean


def test_plain_forwards(benchmark, setup):
    runner, images, _ = setup
    x = runner.unit(np.repeat(images[:IMAGES], MASKS, 0))
    benchmark.pedantic(runner.embed, args=(x,), rounds=3, warmup_rounds=1)
    _record(benchmark, FORWARDS)


def test_poisoncam_masked_forwards(benchmark, setup):
    runner, images, clusters = setup
    locator = MaskingLocator(MASKS, seed=0)
    benchmark.pedantic(locator.locate, args=(runner, images[:IMAGES], clusters, clusters.assignments[:IMAGES], WINDOW),
                       rounds=3, warmup_rounds=1)
    _record(benchmark, FORWARDS)


def test_gradcam_forwards(benchmark, setup):
    runner, images, clusters = setup
    idx = np.arange(FORWARDS) % len(images)
    benchmark.pedantic(GradCamLocator().locate, args=(runner, images[idx], clusters, clusters.assignments[idx], WINDOW),
                       rounds=3, warmup_rounds=1)
    _record(benchmark, FORWARDS)


def test_flip_test_pasted_forwards(benchmark, setup):
    runner, images, clusters = setup
    flips = flip_set(clusters, 3 * MASKS, np.random.default_rng(0))[:MASKS]  # MASKS flip images
    test = FlipTest(runner, images, clusters, flips, "into", seed=0)
    patches = images[:IMAGES, :WINDOW, :WINDOW]
    benchmark.pedantic(test.score, args=(patches, clusters.assignments[:IMAGES]), rounds=3, warmup_rounds=1)
    _record(benchmark, IMAGES * test.size)


def _best_of(fn, rounds: int = 3) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_poisoncam_within_1_5x_of_plain_forwards(setup):
    """Masking, cluster assignment and the attention map add at most 50 % to B plain forwards per image."""
    runner, images, clusters = setup
    x = runner.unit(np.repeat(images[:IMAGES], MASKS, 0))
    locator = MaskingLocator(MASKS, seed=0)
    plain = _best_of(lambda: runner.embed(x))
    masked = _best_of(lambda: locator.locate(runner, images[:IMAGES], clusters, clusters.assignments[:IMAGES], WINDOW))
    print(f"\nplain {FORWARDS / plain:.0f}/s, poisoncam {FORWARDS / masked:.0f}/s, ratio {masked / plain:.2f}")
    assert masked <= 1.5 * plain
