"""SSL-Cleanse: SWK, the MAD index, detection and mitigation on a planted backdoor, the DACC table, the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchsuite.api import DefenseContext, Verdict, config_from_options
from benchsuite.cli import main
from benchsuite.core.errors import BenchError
from benchsuite.defenses.sslcleanse import SSLCleanse
from benchsuite.defenses.sslcleanse import benchsuite_defenses as sslcleanse_plugin
from benchsuite.eval.features import extract_features
from benchsuite.eval.reversed_trigger import judgement_columns
from benchsuite.eval.trigger_codec import decode_trigger, encode_trigger
from benchsuite.reporting.tables import dacc_frame
from benchsuite.sslcleanse.config import SSLCleanseConfig
from benchsuite.sslcleanse.detector import sample_indices
from benchsuite.sslcleanse.inversion import CostSchedule, invert_triggers
from benchsuite.sslcleanse.outlier import anomaly_index
from benchsuite.sslcleanse.swk import choose_k, kneedle, silhouette, sliding_window
from benchsuite.triggers import paste
from tests.fixtures_planted import colour_data, pixel_trigger, single_thread, ssl_backdoor_encoder

SEED, TARGET, SIDE = 1, 0, 8
# small and fast: half of 200 images, K from 6..14, 40 short epochs with a fast lambda schedule
SMALL = SSLCleanseConfig(ratio=0.5, k_min=6, k_max=14, kmeans_restarts=30, epochs=40, batch_size=24,
                         inversion_images=24, knn_sample_num=24, init_cost=2.0, patience=2, lr=0.2,
                         mitigate_ratio=1.0, mitigate_epochs=30, mitigate_batch_size=100, mitigate_lr=0.01,
                         mitigate_warmup_steps=0, crop_scale=(0.6, 1.0), jitter_prob=0.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def context(data, encoder, workdir: Path, seed: int = SEED) -> DefenseContext:
    return DefenseContext(data.images, encoder, extract_features(encoder, data.images), data.num_classes, seed,
                          torch.device("cpu"), workdir)


@pytest.fixture(scope="module")
def planted():
    data, trigger = colour_data(), pixel_trigger(SIDE)
    return data, trigger, ssl_backdoor_encoder(data, trigger, TARGET)


@pytest.fixture(scope="module")
def judged(planted, tmp_path_factory):
    """The verdicts on the backdoored encoder and on its trigger-blind twin."""
    data, trigger, encoder = planted
    out = {}
    for name, enc in (("trojan", encoder), ("clean", ssl_backdoor_encoder(data, trigger, TARGET, sensitive=False))):
        workdir = tmp_path_factory.mktemp(name)
        out[name] = (SSLCleanse(SMALL).inspect(context(data, enc, workdir)), workdir)
    return out


def target_cluster(data, verdict: Verdict) -> int:
    """The cluster holding most sampled target-class images (clusters are numbered by the detector's k-means)."""
    from benchsuite.sslcleanse.detector import cluster_sample

    encoder = ssl_backdoor_encoder(data, pixel_trigger(SIDE), TARGET)
    idx = sample_indices(len(data.images), SMALL.ratio, SEED)
    labels, _ = cluster_sample(extract_features(encoder, data.images[idx]), SMALL, SEED)
    assert labels.max() + 1 == verdict.extras["k"]
    return int(np.bincount(labels[data.labels[idx] == TARGET]).argmax())


def test_detector_flags_the_target_cluster(planted, judged):
    data, trigger, _ = planted
    verdict, workdir = judged["trojan"]
    assert verdict.trojaned and verdict.score > 4
    assert verdict.extras["k"] == data.num_classes  # SWK found the ten hue classes
    assert verdict.flagged == target_cluster(data, verdict)
    assert {p.name for p in workdir.glob("*.png")} == {"swk.png", "triggers.png", "reversed_trigger.png"}


def test_reversed_trigger_is_a_piece_of_the_true_one(planted, judged):
    _, trigger, _ = planted
    mask, pattern = decode_trigger(judged["trojan"][0].extras["trigger"])
    assert mask.mean() < 0.5 * SIDE**2 / mask.size  # smaller than the trigger (half of it suffices)
    truth = trigger.transpose(2, 0, 1) / 255
    best = 0.0
    for y in range(mask.shape[0] - SIDE + 1):  # the trigger works anywhere: align the 8 x 8 box on the mask
        for x in range(mask.shape[1] - SIDE + 1):
            m = mask[y:y + SIDE, x:x + SIDE]
            inside = m.sum() / mask.sum()
            agree = (m * (1 - np.abs(pattern[:, y:y + SIDE, x:x + SIDE] - truth).mean(0))).sum() / max(m.sum(), 1e-9)
            best = max(best, min(inside, agree))
    assert best > 0.8, f"overlap {best:.2f}"


def test_clean_encoder_is_not_flagged(judged):
    verdict, workdir = judged["clean"]
    assert not verdict.trojaned and verdict.flagged is None
    assert verdict.score < 1.5 < judged["trojan"][0].score - 3
    assert (workdir / "triggers.png").is_file()


def test_mitigation_removes_the_trigger_response(planted, judged, tmp_path):
    data, trigger, encoder = planted
    verdict = judged["trojan"][0]
    rng = np.random.default_rng(0)
    others = data.images[data.labels != TARGET]
    patched = paste(others, trigger, rng.integers(0, 32 - SIDE + 1, size=(len(others), 2)))

    def hits(enc: torch.nn.Module) -> tuple[float, float]:
        """Share of patched images nearest the target class's centre; accuracy of nearest centre on clean ones."""
        feats = extract_features(enc, data.images)
        centres = np.stack([feats[data.labels == c].mean(0) for c in range(data.num_classes)])
        nearest = lambda f: np.argmin(((f[:, None] - centres) ** 2).sum(-1), 1)  # noqa: E731
        return (nearest(extract_features(enc, patched)) == TARGET).mean(), (nearest(feats) == data.labels).mean()

    before, acc_before = hits(encoder)
    repaired = SSLCleanse(SMALL).repair(context(data, encoder, tmp_path), verdict)
    after, acc_after = hits(repaired)
    assert before > 0.9 and after < 0.2, (before, after)
    assert acc_after >= acc_before - 0.05
    assert repaired is not encoder and set(repaired.state_dict()) == set(encoder.state_dict())


def test_mitigation_follows_the_verdict(planted, tmp_path):
    data, _, encoder = planted
    ctx = context(data, encoder, tmp_path)
    benign = Verdict(False, 0.5, flagged=None, extras={})
    assert SSLCleanse(SMALL).repair(ctx, benign) is None
    trojaned = Verdict(True, 5.0, flagged=0, extras={})
    assert SSLCleanse(replace(SMALL, mitigate_when="never")).repair(ctx, trojaned) is None
    with pytest.raises(BenchError, match="no reversed trigger"):
        SSLCleanse(replace(SMALL, mitigate_when="always")).repair(ctx, benign)


def test_clusters_in_chunks_match_one_batch(planted):
    """Optimising 3 clusters per forward pass is the same optimisation as all of them at once."""
    data, trigger, _ = planted
    encoder = ssl_backdoor_encoder(data, trigger, TARGET, sensitive=False)
    x = torch.from_numpy(data.images[:60]).permute(0, 3, 1, 2).float() / 255
    feats = torch.from_numpy(extract_features(encoder, data.images[:60]))
    labels = np.arange(60) % 4
    fast = replace(SMALL, epochs=4, inversion_images=16, batch_size=8)
    one = invert_triggers(encoder, x, feats, labels, fast, seed=0)
    chunked = invert_triggers(encoder, x, feats, labels, replace(fast, clusters_per_pass=3), seed=0)
    np.testing.assert_allclose(one.masks, chunked.masks, atol=1e-4)
    np.testing.assert_allclose(one.norms, chunked.norms, atol=1e-5)


def test_anomaly_index_by_hand():
    norms = np.array([0.02, 0.40, 0.45, 0.50, 0.55, 0.60])
    # median 0.475; |x - median| = .455 .075 .025 .025 .075 .125 -> median 0.075
    assert anomaly_index(norms) == pytest.approx(0.455 / (1.4826 * 0.075))
    assert anomaly_index(norms, scale=1 / 0.6745) == pytest.approx(0.455 * 0.6745 / (1.4826 * 0.075))
    assert anomaly_index(np.full(5, 0.3)) == 0.0
    with pytest.raises(BenchError, match="at least 2"):
        anomaly_index(np.array([0.1]))


def test_silhouette_by_hand():
    x = np.array([[0.0], [1.0], [5.0], [6.0]])
    # point 0: a = 1, b = (5 + 6) / 2 = 5.5 -> s = 4.5 / 5.5; symmetric for the others; point 1: a 1, b 4.5
    expected = np.mean([4.5 / 5.5, 3.5 / 4.5, 3.5 / 4.5, 4.5 / 5.5])
    assert silhouette(x, np.array([0, 0, 1, 1])) == pytest.approx(expected)
    assert silhouette(x, np.array([0, 0, 0, 1])) == pytest.approx(np.mean([
        (6 - 3) / 6, (5 - 2.5) / 5, (1 - 4.5) / 4.5, 0.0]))


def test_swk_picks_the_true_k_on_separated_blobs():
    rng = np.random.default_rng(0)
    for true_k in (5, 8):
        centres = rng.normal(size=(true_k, 16)) * 10
        x = np.repeat(centres, 30, 0) + rng.normal(size=(30 * true_k, 16))
        result = choose_k(x, 2, 14, 1, 3, seed=0, restarts=5)
        assert result.k == true_k, result
        assert len(result.scores) == len(result.smoothed) == len(result.ks) == 13


def test_sliding_window_and_knee():
    assert sliding_window(np.array([1.0, 2.0, 6.0, 4.0]), 3).tolist() == [1.5, 3.0, 4.0, 5.0]
    ks = np.arange(2, 12)
    curve = np.array([0.2, 0.5, 0.8, 0.9, 0.88, 0.86, 0.84, 0.83, 0.82, 0.8])
    assert kneedle(ks, curve) == 5
    assert kneedle(ks, -curve) == 2  # falling from the start: the first K


def test_cost_schedule_follows_neural_cleanse():
    s = CostSchedule(1, init_cost=0.1, patience=2, multiplier=2.0)
    s.update(np.array([True]))
    assert s.cost[0] == 0
    s.update(np.array([True]))
    assert s.cost[0] == 0.1  # set after `patience` successes
    for _ in range(2):
        s.update(np.array([True]))
    assert s.cost[0] == pytest.approx(0.2)
    for _ in range(2):
        s.update(np.array([False]))
    assert s.cost[0] == pytest.approx(0.1)


def test_trigger_codec_round_trip():
    rng = np.random.default_rng(0)
    mask, pattern = rng.random((12, 12)), rng.random((3, 12, 12))
    m, p = decode_trigger(encode_trigger(mask, pattern))
    assert np.abs(m - mask).max() <= 0.5 / 255 + 1e-6
    visible = mask[None].repeat(3, 0) > 0.5 / 255
    assert np.abs(p - pattern)[visible].max() <= 0.5 / 255 + 1e-6


def test_bad_options_are_one_line_errors(planted, tmp_path):
    data, _, encoder = planted
    for changes, match in [(dict(clusters=150), "150 clusters on 100 sampled images"),
                           (dict(ratio=0.0), "ratio=0.0"), (dict(mask_penalty="l2"), "mask_penalty"),
                           (dict(ratio=0.01, clusters=None), "no K to try")]:
        with pytest.raises(BenchError, match=match) as err:
            SSLCleanse(replace(SMALL, **changes)).inspect(context(data, encoder, tmp_path))
        assert "\n" not in str(err.value)
    with pytest.raises(BenchError, match="unknown option"):
        config_from_options(SSLCleanseConfig, {"cluster": 3}, "defense sslcleanse")


def test_plugin():
    assert sslcleanse_plugin() == [SSLCleanse] and SSLCleanse.kind == "detector"


def test_dacc_frame_dedupes_clean_encoders():
    rows = []
    for attack, flagged in (("htba", [True, True]), ("spectral", [False, True])):
        for seed, trojaned in enumerate(flagged):
            for target in (0, 1):  # two result rows per encoder (multi-target), one verdict
                rows.append(dict(dataset="synthetic", attack=attack, targets="0+1", target=target, rate=1.0,
                                 seed=seed, defense="sslcleanse", trojaned=trojaned, clean_trojaned=seed == 1))
    rows.append(dict(dataset="synthetic", attack="htba", targets="0+1", target=0, rate=1.0, seed=0,
                     defense="none", trojaned=np.nan, clean_trojaned=np.nan))
    frame = dacc_frame(pd.DataFrame(rows)).set_index(("", "Attack"))
    # htba: 2 poisoned (both flagged) + 2 clean (seed 1 flagged) -> 3 / 4 correct
    htba = frame.loc["htba"]
    assert (htba[("Trojaned", "encoders")], htba[("Trojaned", "TP")]) == ("2", "2")
    assert (htba[("Clean", "encoders")], htba[("Clean", "FP")]) == ("2", "1")
    assert htba[("", "DACC (%)")] == "75.0" and htba[("", "Defense")] == "SSL-Cleanse"
    # all: 4 poisoned (3 flagged) + the same 2 clean encoders counted once -> 4 / 6
    assert (frame.loc["all", ("Trojaned", "encoders")], frame.loc["all", ("Clean", "encoders")]) == ("4", "2")
    assert frame.loc["all", ("", "DACC (%)")] == "66.7"
    assert dacc_frame(pd.DataFrame(rows[-1:])) is None


@pytest.mark.slow
def test_cli_prints_the_dacc_table(tmp_path, tiny_args, capsys):
    options = ["ratio=0.1", "k_min=4", "k_max=8", "kmeans_restarts=3", "epochs=3", "batch_size=16",
               "inversion_images=16", "knn_sample_num=16", "mitigate_when='always'", "mitigate_ratio=0.2",
               "mitigate_epochs=1", "mitigate_batch_size=24", "mitigate_warmup_steps=0"]
    sets = [arg for option in options for arg in ("--set", f"defense.sslcleanse.{option}")]
    # DECREE judges the same two encoders in the same run (one pair of encoder trainings for both detectors)
    sets += [arg for option in ("shadow_images=16", "batch_size=8", "max_epochs=2")
             for arg in ("--set", f"defense.decree.{option}")]
    assert main(["run", "--defense", "sslcleanse,decree", *tiny_args, *sets]) == 0
    out = capsys.readouterr().out
    assert "SSL-Cleanse" in out and "DACC" in out and "DECREE" in out
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name != "cache")
    results = pd.read_csv(run_dir / "results.csv").set_index("defense")
    _check_decree_row(results, run_dir, capsys)
    row = results.loc["sslcleanse"]
    for prefix in ("", "clean_"):  # 3 inversion epochs: few clusters converge, below three the test abstains
        index, converged = row[prefix + "anomaly_index"], row[prefix + "k"] - row[prefix + "unconverged"]
        assert index >= 0 if converged >= 3 else np.isnan(index) and not row[prefix + "trojaned"]
    assert row["encoder_key"] != results.loc["none", "encoder_key"]  # the mitigated encoder was evaluated
    # cost: inspection + mitigation, no encoder forwards counted (those are the filters' search)
    assert row["cost_defense_s"] > 0 and pd.isna(row["cost_forward_images"]) and pd.isna(row["cost_pretrain_s"])
    assert (run_dir / row["figures"].split(";")[0]).is_file()
    # the evaluator's view: the smallest cluster's class, the reversed trigger against the real one, the times
    for prefix in ("", "clean_"):
        assert 0 <= row[prefix + "flagged_label"] < 10 and 0 < row[prefix + "flagged_label_share"] <= 1
        assert 0 <= row[prefix + "trigger_iou"] <= row[prefix + "trigger_iou_best"] <= 1
        assert row[prefix + "detect_s"] > 0
    assert row["mitigate_s"] > 0
    assert {"sslcleanse_reversed_vs_true_poisoned.png", "sslcleanse_reversed_vs_true_clean.png"} <= {
        Path(f).name for f in row["figures"].split(";")}
    assert "Detectors per encoder" in out


def test_two_clusters_can_never_be_flagged():
    """Why K >= 3: with two norms the MAD equals the deviation, so the index is always 1 / 1.4826."""
    for a, b in [(0.01, 5.0), (0.3, 0.31)]:
        assert anomaly_index(np.array([a, b])) == pytest.approx(1 / 1.4826)


def test_fewer_than_three_clusters_are_refused_when_the_config_is_read():
    assert SSLCleanseConfig().k_min >= 3
    for options, option in [({"k_min": 2}, "k_min"), ({"clusters": 2}, "clusters"), ({"k_min": 1}, "k_min")]:
        with pytest.raises(BenchError, match=f"defense.sslcleanse.{option}") as err:
            config_from_options(SSLCleanseConfig, options, "defense sslcleanse")
        assert "\n" not in str(err.value)
    assert config_from_options(SSLCleanseConfig, {"clusters": 3}, "defense sslcleanse").clusters == 3


def test_cli_refuses_k_min_2_before_any_stage(tiny_args, capsys):
    args = ["run", "--defense", "sslcleanse", "--dry-run", *tiny_args, "--set", "defense.sslcleanse.k_min=2"]
    assert main(args) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "error:" in text and "defense.sslcleanse.k_min >= 3" in text


def test_verdict_warns_when_swk_stops_at_k_min(planted, tmp_path, monkeypatch):
    """SWK choosing the first K of its range may mean the knee lies below it: the verdict says so."""
    import benchsuite.sslcleanse.detector as detector
    from benchsuite.sslcleanse.swk import SWKResult

    data, _, encoder = planted
    fast = replace(SMALL, k_min=3, k_max=5, epochs=1, inversion_images=8, knn_sample_num=8, batch_size=8)

    def swk_warnings(verdict: Verdict) -> list[str]:  # one epoch converges nowhere: leave out the abstention
        return [w for w in verdict.extras.get("warnings", []) if w != verdict.extras.get("abstained")]

    for chosen, warned in [(3, True), (4, False)]:
        curve = SWKResult(chosen, [3, 4, 5], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1], 1)
        monkeypatch.setattr(detector, "choose_k", lambda *args, curve=curve, **kw: curve)
        verdict = SSLCleanse(fast).inspect(context(data, encoder, None))
        assert verdict.extras["k"] == chosen
        warnings = swk_warnings(verdict)
        assert bool(warnings) == warned, warnings
        if warned:
            assert len(warnings) == 1 and "k_min" in warnings[0] and "\n" not in warnings[0]
    fixed = SSLCleanse(replace(fast, clusters=3)).inspect(context(data, encoder, None))
    assert swk_warnings(fixed) == []
    one_k = SWKResult(3, [3], [0.3], [0.3], 1)  # a range of one K is a fixed K: nothing to warn about
    assert detector.verdict_warnings(one_k, 3) == []
    (emptied,) = detector.verdict_warnings(None, 2)  # k-means left two non-empty clusters
    assert "defense.sslcleanse.ratio" in emptied


def test_mitigation_options_leave_the_verdict_and_its_cache_key_alone(planted, tmp_path):
    from benchsuite.sslcleanse.config import MITIGATION_ONLY

    data, _, encoder = planted
    other = replace(SMALL, mitigate_when="never", mitigate_ratio=0.3, mitigate_epochs=2, mitigate_batch_size=8,
                    mitigate_lr=0.5, mitigate_weight_decay=0.1, mitigate_warmup_steps=7, mitigate_lr_drops=(0.5,),
                    trigger_fraction=0.9, crop_scale=(0.9, 1.0), jitter_prob=0.1)
    assert all(getattr(other, name) != getattr(SMALL, name) for name in MITIGATION_ONLY)
    assert SSLCleanse(other).inspect_options() == SSLCleanse(SMALL).inspect_options()
    assert SSLCleanse(replace(SMALL, epochs=41)).inspect_options() != SSLCleanse(SMALL).inspect_options()
    small = replace(SMALL, k_min=10, k_max=10, epochs=8)  # enough to compare the two verdicts
    first = SSLCleanse(small).inspect(context(data, encoder, tmp_path / "a"))
    second = SSLCleanse(replace(other, k_min=10, k_max=10, epochs=8)).inspect(context(data, encoder, tmp_path / "b"))
    drop = ("seconds",)
    assert {k: v for k, v in first.extras.items() if k not in drop} == \
        {k: v for k, v in second.extras.items() if k not in drop}


@pytest.mark.slow
def test_a_whole_image_trigger_is_judged_without_trigger_overlap(tmp_path, tiny_args):
    """CTRL's trigger has no box: the verdict's cluster columns, no overlap columns, no picture, no error."""
    options = ["ratio=0.1", "k_min=4", "k_max=8", "kmeans_restarts=3", "epochs=3", "batch_size=16",
               "inversion_images=16", "knn_sample_num=16", "mitigate_when='never'"]
    sets = [arg for option in options for arg in ("--set", f"defense.sslcleanse.{option}")]
    assert main(["run", "--attack", "spectral", "--defense", "sslcleanse", *tiny_args, *sets]) == 0
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name != "cache")
    row = pd.read_csv(run_dir / "results.csv").set_index("defense").loc["sslcleanse"]
    assert 0 <= row["flagged_label"] < 10 and "trigger_iou" not in row.index
    assert "reversed_vs_true" not in str(row["figures"])


def _stubbed_verdict(monkeypatch, norms: list[float], reached: list[bool]) -> Verdict:
    """The detector's verdict when the inversion gives these per-cluster norms (clustering and inversion stubbed)."""
    import benchsuite.sslcleanse.detector as detector
    from benchsuite.sslcleanse.inversion import Inversion

    k, n = len(norms), 4 * len(norms)
    labels = np.arange(n) % k
    inversion = Inversion(np.zeros((k, 32, 32), np.float32), np.zeros((k, 3, 32, 32), np.float32),
                          np.array(norms), np.where(reached, 1.0, 0.5), np.array(reached))
    monkeypatch.setattr(detector, "cluster_sample", lambda *args, **kw: (labels, None))
    monkeypatch.setattr(detector, "invert_triggers", lambda *args, **kw: inversion)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    return detector.detect(torch.nn.Identity(), images, np.zeros((n, 4), np.float32), replace(SMALL, ratio=1.0),
                           SEED, torch.device("cpu"))


def test_clusters_that_never_converged_stay_out_of_the_mad_test(monkeypatch):
    """Issue #24: a norm of 1 (the ASR never reached the threshold) is no norm; six of them made the MAD 0 and the
    index 9.4e11. The test runs on the five converged clusters: median 0.09, MAD 0.01 -> (0.09-0.06)/(1.4826*0.01)."""
    norms = [0.06, 0.08, 0.09, 0.10, 0.11] + [1.0] * 6
    verdict = _stubbed_verdict(monkeypatch, norms, [True] * 5 + [False] * 6)
    assert verdict.score == pytest.approx(0.03 / (1.4826 * 0.01))
    assert verdict.extras["unconverged"] == 6 and "abstained" not in verdict.extras
    assert verdict.trojaned and verdict.flagged == 0
    columns = judgement_columns(verdict.extras, np.zeros(44, np.int64), {}, np.zeros((0, 4)), np.zeros(0))
    assert columns["unconverged"] == 6
    assert columns["min_norm"] == pytest.approx(0.06) and columns["median_norm"] == pytest.approx(0.09)


def test_fewer_than_three_converged_clusters_abstain(monkeypatch):
    for converged in (0, 1, 2):
        norms = [0.05, 0.2][:converged] + [1.0] * (8 - converged)
        verdict = _stubbed_verdict(monkeypatch, norms, [True] * converged + [False] * (8 - converged))
        assert not verdict.trojaned and verdict.flagged is None and np.isnan(verdict.score)
        assert verdict.extras["unconverged"] == 8 - converged
        message = verdict.extras["abstained"]
        assert f"{converged} of 8 clusters" in message and "\n" not in message
        assert message in verdict.extras["warnings"]


def _check_decree_row(results: pd.DataFrame, run_dir: Path, capsys) -> None:
    """DECREE's row of the shared CLI run: its verdicts, score, inverted-trigger columns, pictures and table."""
    row = results.loc["decree"]
    assert row["trojaned"] in (True, False) and row["clean_trojaned"] in (True, False)
    assert 0 <= row["pl1"] <= 1 and 0 <= row["clean_pl1"] <= 1
    assert row["detector_threshold"] == 0.1 and row["detector_score"] == "pl1"
    assert row["encoder_key"] == results.loc["none", "encoder_key"]  # nothing repaired: the encoder as it is
    for prefix in ("", "clean_"):  # the inverted trigger judged against the real one, the inversion's columns
        assert 0 <= row[prefix + "trigger_iou"] <= row[prefix + "trigger_iou_best"] <= 1
        assert row[prefix + "inversion_epochs"] == 2 and row[prefix + "detect_s"] >= 0
    figures = {Path(f).name for f in row["figures"].split(";")}
    assert {"decree_inversion.png", "decree_reversed_vs_true_poisoned.png",
            "decree_reversed_vs_true_clean.png"} <= figures
    assert main(["table", str(run_dir), "--layout", "sslcleanse", "--format", "markdown"]) == 0
    table = capsys.readouterr().out
    assert "DECREE" in table and "DACC" in table and "SSL-Cleanse" in table
