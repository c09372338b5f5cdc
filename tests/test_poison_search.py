"""The shared search of the filter defenses: windows, clustering, locators, flip test, search, classifier parts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from benchsuite.core.clustering import kmeans
from benchsuite.core.errors import BenchError
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


# -- cluster score rules and the PatchSearch-code compatibility mode (issue #12 points 6, 10) -------
def test_cluster_score_sum_is_this_iteration_total_is_the_running_sum():
    from benchsuite.poison_search.search import cluster_scores

    # cluster 0 scored 9, 9 then 0, 0; cluster 1 scored 3, 3 then 4, 4; cluster 2 ran out after 5, 5
    scores = np.array([9, 9, 0, 0, 3, 3, 4, 4, 5, 5], dtype=float)
    members = {0: np.arange(4), 1: np.arange(4, 8), 2: np.arange(8, 10)}
    now = np.zeros(10, dtype=bool)
    now[[2, 3, 6, 7]] = True
    assert cluster_scores(scores, members, [0, 1, 2], "sum", now).tolist() == [0, 8, -np.inf]
    assert cluster_scores(scores, members, [0, 1, 2], "total", now).tolist() == [18, 14, 10]
    assert cluster_scores(scores, members, [0, 1, 2], "max", now).tolist() == [9, 4, 5]


def test_code_compat_counts_unscored_members_as_zero():
    from benchsuite.poison_search.search import cluster_scores

    scores = np.array([-2.0, -3.0, -np.inf, -1.0, -4.0])
    members = {0: np.arange(3), 1: np.arange(3, 5)}  # cluster 0 has an unscored member, cluster 1 none
    now = np.ones(5, dtype=bool)
    assert cluster_scores(scores, members, [0, 1], "max", now).tolist() == [-2, -1]
    assert cluster_scores(scores, members, [0, 1], "max", now, unscored_as_zero=True).tolist() == [0, -1]
    assert cluster_scores(scores, members, [0, 1], "total", now, unscored_as_zero=True).tolist() == [-5, -5]


def test_code_compat_ranks_unscored_images_at_zero_above_negatives():
    scores = np.array([-1.0, -np.inf, 2.0, 0.0, -np.inf])
    windows = np.where(np.isfinite(scores)[:, None], np.array([[0, 0, 4, 4]]), -1)
    paper = SearchResult(scores, windows, 4, 1, np.arange(3))
    code = SearchResult(scores, windows, 4, 1, np.arange(3), unscored_score=0.0)
    assert paper.ranking().tolist() == [2, 3, 0, 1, 4]
    assert code.ranking().tolist() == [2, 1, 3, 4, 0]
    assert code.ranked_scores.tolist() == [-1, 0, 2, 0, 0] and np.isneginf(paper.ranked_scores[[1, 4]]).all()
    assert code.top(3).tolist() == [2, 3, 0]  # patches need a window: only scored images


def test_code_compat_stops_at_three_clusters_or_fewer():
    from benchsuite.poison_search.search import survivors

    paper, code = search_cfg(), search_cfg(compat="code")
    assert [survivors(n, paper) for n in (3, 4, 8)] == [2, 3, 6]
    assert [survivors(n, code) for n in (3, 4, 8)] == [0, 3, 6]
    assert survivors(3, search_cfg(prune_at_least_one=False)) == 0
    with pytest.raises(BenchError, match="compat"):
        search_cfg(compat="official")


def test_code_compat_corners_leave_out_the_last_position():
    from benchsuite.poison_search.flip import draw_corners

    gen = torch.Generator().manual_seed(0)
    paper = draw_corners(4000, 30, 32, 31, gen, "paper")
    code = draw_corners(4000, 30, 32, 31, gen, "code")
    assert paper[:, 0].max() == 1 and paper[:, 1].max() == 2 and paper.min() == 0  # [0, side - w]
    assert code[:, 0].max() == 0 and code[:, 1].max() == 1 and code.min() == 0  # [0, side - w)
    assert draw_corners(5, 32, 32, 32, gen, "code").abs().sum() == 0  # w = side: the only corner


class _Constant(torch.nn.Module):
    """A pooled feature (0.1, 0) for every image: short, so raw and unit-norm assignment disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.1, 0.0]]).repeat(len(x), 1)


def test_code_compat_assigns_pasted_images_by_raw_features():
    from benchsuite.core.clustering import Clusters, centre_index

    centres = np.array([[1.0, 0.0], [0.2, 0.0]], dtype=np.float32)  # unit feature -> 0, raw (0.1, 0) -> 1
    index, _ = centre_index(centres, use_gpu=False)
    clusters = Clusters(centres, np.zeros(6, np.int64), np.zeros(6, np.float32), index)
    images = np.zeros((6, 8, 8, 3), dtype=np.uint8)
    runner = EncoderRunner(_Constant(), "cpu")
    patches = np.zeros((1, 3, 3, 3), dtype=np.uint8)
    flips = np.arange(4)
    paper = FlipTest(runner, images, clusters, flips, "into", seed=0)
    code = FlipTest(runner, images, clusters, flips, "into", seed=0, compat="code")
    assert paper.score(patches, np.array([1])).tolist() == [0.0]
    assert code.score(patches, np.array([1])).tolist() == [4.0]
    with pytest.raises(BenchError, match="compat"):
        FlipTest(runner, images, clusters, flips, "into", compat="official")


def test_code_compat_gradcam_target_is_the_argmax_over_cluster_means():
    from benchsuite.core.clustering import Clusters, centre_index
    from benchsuite.poison_search.search import mean_centre_targets

    feats = np.array([[1, 0], [0.8, 0.6], [0, 1], [0.1, 1], [1, 1]], dtype=np.float32)
    centres = np.array([[1, 0], [0, 1]], dtype=np.float32)
    index, _ = centre_index(centres, use_gpu=False)
    clusters = Clusters(centres, np.array([0, 0, 1, 1, 1]), np.zeros(5, np.float32), index)
    head, targets = mean_centre_targets(feats, clusters)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert np.allclose(head.centres, [unit[:2].mean(0), unit[2:].mean(0)], atol=1e-6)
    assert head.index is clusters.index and targets.tolist() == [0, 0, 1, 1, 0]  # (1, 1) is closer to mean 0


def test_compat_is_checked_when_the_defense_config_is_read():
    from benchsuite.api import config_from_options
    from benchsuite.poison_search.defaults import FilterDefenseConfig

    assert FilterDefenseConfig().compat == "paper" and FilterDefenseConfig(compat="code").compat == "code"
    with pytest.raises(BenchError, match="compat.*'paper'.*'code'"):
        config_from_options(FilterDefenseConfig, {"compat": "official"}, "defense patchsearch")
    with pytest.raises(BenchError, match="cluster_score.*max, sum, total"):
        FilterDefenseConfig(cluster_score="mean")


class RecordingLocator:
    """Wraps a locator and keeps every map it returns, keyed by the image's bytes (it is handed copies)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.maps = inner, inner.name, {}

    def locate(self, runner, images, clusters, assignments, window):
        located = self.inner.locate(runner, images, clusters, assignments, window)
        for image, att in zip(images, located.maps, strict=True):
            self.maps.setdefault(image.tobytes(), []).append(att.copy())
        return located


def test_saved_attention_maps_are_the_ones_the_windows_came_from(planted, tmp_path):
    from benchsuite.api import DefenseContext
    from benchsuite.defenses.poisoncam import PoisonCAMConfig
    from benchsuite.poison_search import filter_config, run_filter

    p, runner, _ = planted
    assert len({image.tobytes() for image in p.images}) == len(p.images)
    options = PoisonCAMConfig(num_clusters=20, window=WINDOW, flip_set_size=40, top_k=5, pictures=4,
                              min_flip_fraction=2.0)  # the no-trigger guard always trips: no classifier to train
    ctx = DefenseContext(p.images, runner.encoder, None, 10, 0, torch.device("cpu"), tmp_path)
    recorder = RecordingLocator(MaskingLocator(16, seed=0))
    detection = run_filter(ctx, recorder, filter_config(options, 10, len(p.images)))
    with np.load(tmp_path / "attention_masking.npz") as saved:
        indices, maps, windows = saved["indices"], saved["maps"], saved["windows"]
    assert len(indices) == 4 and (tmp_path / "attention_masking.png").is_file()
    np.testing.assert_array_equal(indices, np.argsort(-detection.scores, kind="stable")[:4])
    np.testing.assert_array_equal(windows, detection.windows[indices])
    for i, att, window in zip(indices, maps, windows, strict=True):
        during_search = recorder.maps[p.images[i].tobytes()][0]  # the search locates each image once
        np.testing.assert_array_equal(att, during_search)
        assert best_windows(torch.from_numpy(att)[None], WINDOW)[0].tolist() == window.tolist()


def test_top_maps_keeps_the_final_top_images_across_batches():
    from benchsuite.poison_search.filter import TopMaps
    from benchsuite.poison_search.locators import Located

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=30).astype(float)  # many ties: broken by index, as SearchResult.top
    maps = rng.random((30, 5, 5)).astype(np.float32)
    kept = TopMaps(6)
    for batch in np.array_split(rng.permutation(30), 4):
        kept(batch, Located(np.zeros((len(batch), 4), np.int64), maps[batch]), scores[batch])
    top = np.argsort(-scores, kind="stable")[:6]
    assert sorted(kept.maps) == sorted(top.tolist())
    for i in top:
        np.testing.assert_array_equal(kept.maps[int(i)], maps[i])


def test_search_in_code_compat_mode_still_ranks_poisons_first(planted):
    p, runner, clusters = planted
    code = iterative_search(runner, p.images, clusters, GradCamLocator(), WINDOW, search_cfg(compat="code"), seed=0)
    paper = iterative_search(runner, p.images, clusters, GradCamLocator(), WINDOW, search_cfg(), seed=0)
    assert code.iterations < paper.iterations  # the code's stop at <= 3 clusters
    assert p.poisoning.poison_mask[code.top(20)].mean() >= 0.9
    assert (code.ranked_scores[~code.scored] == 0).all() and np.isneginf(paper.ranked_scores[~paper.scored]).all()


def test_the_official_split_drops_the_whole_rankings_top_and_takes_the_lowest_ranked_negatives():
    """compat = "code": unscored images rank at 0 (above negative scores) and count among the top p %."""
    scores = np.full(100, -np.inf)
    scores[:30] = np.arange(30) - 10.0  # scored: -10 .. 19; the 70 unscored rank at 0
    result = replace(fake_result(scores), unscored_score=0.0)
    split = split_by_rank(result, 5, 0.25, np.random.default_rng(0), official=True)
    ranking = result.ranking()
    np.testing.assert_array_equal(split.val_pos, ranking[:5])  # scores 19 .. 15
    np.testing.assert_array_equal(np.sort(split.val_neg), np.sort(ranking[-5:]))  # the lowest: -10 .. -6
    assert set(scores[split.val_neg]) == {-10.0, -9.0, -8.0, -7.0, -6.0}
    dropped = set(ranking[:25].tolist())  # 19 scored (1..19) and 6 unscored images at 0
    assert not np.isfinite(scores[list(dropped)]).all() and not dropped & set(split.pool.tolist())
    default = split_by_rank(result, 5, 0.25, np.random.default_rng(0))  # the suite's: scored top, random unscored
    assert not np.isfinite(scores[default.val_neg]).any() and np.isfinite(scores[ranking[:25]][:19]).all()
