"""The shared search of the filter defenses: windows, clustering, locators, flip test, search, classifier parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchsuite.clustering import kmeans
from benchsuite.errors import BenchError
from benchsuite.eval.features import extract_features
from benchsuite.poison_search import (
    EncoderRunner,
    FlipTest,
    GradCamLocator,
    MaskingLocator,
    SearchConfig,
    SearchResult,
    best_windows,
    box_iou,
    choose_window,
    crop_windows,
    flip_set,
    iterative_search,
    paste_patches,
    relative_std,
    window_side,
)
from benchsuite.poison_search.classifier import ClassifierConfig, f1_percent, paste_scaled, split_by_rank
from benchsuite.poison_search.masking import attention_maps, outlier_scores, window_masks
from benchsuite.ssl.augment import AugmentConfig
from tests.fixtures_planted import PooledOnly, planted_data, planted_encoder, single_thread

WINDOW = 10  # the planted trigger is 10 px at 32 px


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def planted():
    p = planted_data()
    encoder = planted_encoder(p)
    clusters = kmeans(extract_features(encoder, p.images), 20, seed=0)
    return p, EncoderRunner(encoder, "cpu", 512), clusters


def search_cfg(**kw) -> SearchConfig:
    base = dict(samples_per_iteration=2, prune_fraction=0.25, cluster_score="max", flip_score="into",
                flip_set_size=40, prune_at_least_one=True)
    return SearchConfig(**{**base, **kw})


# -- windows ---------------------------------------------------------------------------------------
def test_window_side_pixels_fraction_and_errors():
    assert window_side(10, 32) == 10
    assert window_side(0.25, 32) == 8
    with pytest.raises(BenchError, match="larger than the 32px"):
        window_side(40, 32)
    with pytest.raises(BenchError, match="empty window"):
        window_side(0.001, 32)


def test_best_windows_finds_the_hot_square_first_on_ties():
    maps = torch.zeros(2, 16, 16)
    maps[0, 5:9, 3:7] = 1.0
    win = best_windows(maps, 4)
    assert win[0].tolist() == [3, 5, 4, 4]
    assert win[1].tolist() == [0, 0, 4, 4]  # all-zero map: first window in row-major order
    with pytest.raises(BenchError):
        best_windows(maps, 17)


def test_paste_patches_matches_a_loop_and_crop_inverts_it():
    gen = torch.Generator().manual_seed(0)
    canvas = torch.rand(5, 3, 12, 12, generator=gen)
    patches = torch.rand(5, 3, 4, 4, generator=gen)
    corners = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [1, 7]])
    expected = canvas.clone()
    for i, (x, y) in enumerate(corners.tolist()):
        expected[i, :, y:y + 4, x:x + 4] = patches[i]
    out = paste_patches(canvas.clone(), patches, corners)
    assert torch.equal(out, expected)
    images = (out.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    windows = np.column_stack([corners.numpy(), np.full((5, 2), 4)])
    assert np.array_equal(crop_windows(images, windows), (patches.permute(0, 2, 3, 1) * 255).round().byte().numpy())


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [-1, -1, -1, -1]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]])
    assert np.allclose(box_iou(a, b), [1.0, 50 / 150, 0.0, 0.0])


# -- clustering ------------------------------------------------------------------------------------
def test_kmeans_is_deterministic_and_assigns_to_the_nearest_centre():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(c, 0.05, size=(30, 4)) for c in np.eye(4)]).astype(np.float32)
    a, b = kmeans(feats, 4, seed=3), kmeans(feats, 4, seed=3)
    assert np.array_equal(a.centres, b.centres) and np.array_equal(a.assignments, b.assignments)
    assert len(np.unique(a.assignments)) == 4
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    dist = np.linalg.norm(unit[:, None] - a.centres[None], axis=2)
    assert np.array_equal(dist.argmin(1), a.assignments)
    assert np.allclose(dist.min(1), a.distances, atol=1e-5)


def test_kmeans_refuses_more_clusters_than_images():
    with pytest.raises(BenchError, match="5 clusters on 4 images"):
        kmeans(np.random.default_rng(0).normal(size=(4, 3)), 5, seed=0)
    with pytest.raises(BenchError):
        kmeans(np.ones((4, 3)), 0, seed=0)


# -- cluster activation masking parts -------------------------------------------------------------
def test_masks_scores_and_attention_follow_the_paper():
    masks = window_masks(torch.tensor([[[0, 0], [2, 2]]]), 2, 4, 4)  # (1, 2, 4, 4)
    assert masks.sum().item() == 8 and masks[0, 0, :2, :2].all() and masks[0, 1, 2:, 2:].all()
    eta = np.array([[3, 3, 3, 7]])
    dist = np.array([[1.0, 2.0, 3.0, 0.5]])
    scores = outlier_scores(eta, dist)
    assert np.allclose(scores, [[0.2, 0.6, 1.0, 1.0]])  # max-min over all B, 1 where the cluster changed
    att = attention_maps(masks, torch.tensor([[0.5, 1.0]]))
    assert att[0, 0, 0] == 0.5 and att[0, 3, 3] == 1.0 and att[0, 0, 3] == 0.0  # uncovered pixels -> 0


# -- locators ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("locator", [GradCamLocator(), MaskingLocator(64, seed=0)], ids=["gradcam", "masking"])
def test_locators_put_the_window_on_the_trigger(planted, locator):
    p, runner, clusters = planted
    idx = p.poisoning.poison_indices
    located = locator.locate(runner, p.images[idx], clusters, clusters.assignments[idx], WINDOW)
    assert located.maps.shape == (len(idx), 32, 32)
    iou = box_iou(located.windows, p.poisoning.boxes[idx])
    assert (iou >= 0.5).mean() >= 0.6, f"IoU >= 0.5 for only {(iou >= 0.5).mean():.0%} of the poisons"


def test_masking_is_deterministic_for_a_seed(planted):
    p, runner, clusters = planted
    idx = p.poisoning.poison_indices[:4]
    a, b = (MaskingLocator(16, seed=5).locate(runner, p.images[idx], clusters, clusters.assignments[idx], WINDOW)
            for _ in range(2))
    assert np.array_equal(a.windows, b.windows) and np.array_equal(a.maps, b.maps)


def test_gradcam_needs_spatial_features_masking_does_not(planted):
    p, runner, clusters = planted
    pooled = EncoderRunner(PooledOnly(runner.encoder), "cpu")
    images = p.images[:4]
    with pytest.raises(BenchError, match="spatial"):
        GradCamLocator().locate(pooled, images, clusters, clusters.assignments[:4], WINDOW)
    located = MaskingLocator(8, seed=0).locate(pooled, images, clusters, clusters.assignments[:4], WINDOW)
    assert located.windows.shape == (4, 4)


def test_window_larger_than_the_image_is_refused(planted):
    p, runner, clusters = planted
    with pytest.raises(BenchError, match="larger than"):
        MaskingLocator(8, seed=0).locate(runner, p.images[:2], clusters, clusters.assignments[:2], 40)
    with pytest.raises(BenchError, match="larger than"):
        GradCamLocator().locate(runner, p.images[:2], clusters, clusters.assignments[:2], 40)


# -- flip test and search ----------------------------------------------------------------------------
def test_flip_set_takes_the_images_closest_to_each_centre(planted):
    p, _, clusters = planted
    idx = flip_set(clusters, 40, np.random.default_rng(0))
    assert len(idx) == 40
    for c in range(clusters.num_clusters):
        members = clusters.members(c)
        chosen = np.intersect1d(idx, members)
        assert np.array_equal(np.sort(chosen), np.sort(members[np.argsort(clusters.distances[members])[:2]]))
    assert len(flip_set(clusters, 5, np.random.default_rng(0))) == 5  # fewer than l: one image of 5 clusters


def test_flip_test_counts_flips_into_the_trigger_cluster(planted):
    p, runner, clusters = planted
    idx = p.poisoning.poison_indices[:3]
    flips = flip_set(clusters, 40, np.random.default_rng(0))
    trigger_crops = crop_windows(p.images[idx], p.poisoning.boxes[idx])
    clean = np.flatnonzero(~p.poisoning.poison_mask)[:3]
    clean_crops = crop_windows(p.images[clean], np.tile([[11, 11, 10, 10]], (3, 1)))
    into = FlipTest(runner, p.images, clusters, flips, "into", seed=0)
    poison_scores = into.score(trigger_crops, clusters.assignments[idx])
    assert (poison_scores >= 0.8 * len(flips) - 2).all()
    assert (into.score(clean_crops, clusters.assignments[clean]) <= 3).all()
    anyway = FlipTest(runner, p.images, clusters, flips, "any", seed=0)
    assert (anyway.score(trigger_crops, clusters.assignments[idx]) >= poison_scores).all()


def test_search_ranks_poisons_first(planted):
    p, runner, clusters = planted
    result = iterative_search(runner, p.images, clusters, GradCamLocator(), WINDOW, search_cfg(), seed=0)
    mask = p.poisoning.poison_mask
    assert mask[result.top(20)].mean() >= 0.9
    assert np.isneginf(result.scores[~result.scored]).all() and (result.windows[~result.scored] == -1).all()
    assert 0 < result.scored.sum() < len(mask)  # the search scores only part of the set
    assert result.patches(p.images, 5).shape == (5, WINDOW, WINDOW, 3)


def test_search_fails_on_an_encoder_blind_to_the_trigger():
    """The negative control: same data and settings, encoder without the trigger detector."""
    p = planted_data()
    encoder = planted_encoder(p, sensitive=False)
    clusters = kmeans(extract_features(encoder, p.images), 20, seed=0)
    result = iterative_search(EncoderRunner(encoder, "cpu"), p.images, clusters, GradCamLocator(), WINDOW,
                              search_cfg(), seed=0)
    assert p.poisoning.poison_mask[result.top(20)].mean() < 0.5


def test_search_sum_score_and_code_stop_rule(planted):
    p, runner, clusters = planted
    code = iterative_search(runner, p.images, clusters, GradCamLocator(), WINDOW,
                            search_cfg(cluster_score="sum", prune_at_least_one=False), seed=0)
    paper = iterative_search(runner, p.images, clusters, GradCamLocator(), WINDOW,
                             search_cfg(cluster_score="sum"), seed=0)
    assert code.iterations < paper.iterations  # PS code stops once int(r * candidates) == 0
    assert p.poisoning.poison_mask[paper.top(20)].mean() >= 0.9
    with pytest.raises(BenchError):
        search_cfg(cluster_score="mean")


def test_rsd_picks_a_window_that_catches_the_trigger(planted):
    p, runner, clusters = planted

    def run(side: int) -> SearchResult:
        return iterative_search(runner, p.images, clusters, GradCamLocator(), side, search_cfg(), seed=0)

    result, rsd = choose_window(run, [4, 10], min_flip_fraction=0.1)
    assert rsd[4] == 0.0 and result.window == 10 and rsd[10] > 0
    assert p.poisoning.poison_mask[result.top(20)].mean() >= 0.9
    assert relative_std(np.array([-np.inf, 0.0, 0.0])) == 0.0
    assert relative_std(np.array([1.0, 3.0])) == pytest.approx(0.5)


# -- poison classifier parts -------------------------------------------------------------------------
def fake_result(scores: np.ndarray) -> SearchResult:
    windows = np.where(np.isfinite(scores)[:, None], np.array([[0, 0, 4, 4]]), -1)
    return SearchResult(scores.astype(float), windows, 4, 1, np.arange(3))


def test_split_by_rank_and_bad_k():
    scores = np.full(100, -np.inf)
    scores[:30] = np.arange(30)
    split = split_by_rank(fake_result(scores), 5, 0.1, np.random.default_rng(0))
    assert sorted(split.val_pos.tolist()) == [25, 26, 27, 28, 29]
    assert len(split.val_neg) == 5 and not np.isfinite(scores[split.val_neg]).any()  # bottom-k: unscored images
    dropped = set(range(20, 30))  # top 10 % of 100 images
    assert not dropped & set(split.pool.tolist()) and len(split.pool) == 100 - 10 - 5
    with pytest.raises(BenchError, match="top_k=60"):
        split_by_rank(fake_result(scores), 60, 0.1, np.random.default_rng(0))
    with pytest.raises(BenchError, match="scored no image"):
        split_by_rank(fake_result(np.full(100, -np.inf)), 5, 0.1, np.random.default_rng(0))


def test_paste_scaled_pastes_only_the_chosen_rows():
    cfg = ClassifierConfig(1, 0.1, 1, 8, 1, 4, 0.01, 0.9, 0.0, 1, 1, 1, 0.5, (0.25, 0.25), 0.0,
                           AugmentConfig(blur_prob=0.0))
    x = torch.zeros(4, 3, 16, 16)
    patches = torch.ones(1, 3, 6, 6)
    out = paste_scaled(x, patches, torch.tensor([True, False, True, False]), cfg, torch.Generator().manual_seed(0))
    assert out[1].sum() == 0 and out[3].sum() == 0
    assert out[0].sum().item() == pytest.approx(3 * 4 * 4) and out[2].sum().item() == pytest.approx(3 * 4 * 4)
    assert f1_percent(np.array([True, True, False]), np.array([True, False, False])) == 66
