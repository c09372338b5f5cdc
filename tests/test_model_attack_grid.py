"""A model attack (BadEncoder) through the grid: the backdoor stage on the seed's clean encoder, its pictures,
the clean reference row, the data-level defenses declared n/a, and ``--dry-run``'s plan."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchsuite.cli import main
from benchsuite.core.console import console
from tests.conftest import TINY_OVERRIDES

QUICK = ["attack.badencoder.epochs=1", "attack.badencoder.batch_size=64", "attack.badencoder.reference='central'",
         "defense.distill.epochs=2", "defense.distill.fraction=0.5", "defense.distill.batch_size=32",
         "defense.distill.queue_size=64"]


def _args(tmp_path, *extra: str) -> list[str]:
    args = ["run", "--attack", "badencoder", "--defense", "none,patchsearch,icutmix,distill", "--preset", "smoke",
            "--device", "cpu", "--out", str(tmp_path / "runs"), *extra]
    for item in [*TINY_OVERRIDES, *QUICK]:
        args += ["--set", item]
    return args


def test_badencoder_runs_through_the_grid(tmp_path, capsys, monkeypatch):
    assert main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "n/a: PatchSearch on badencoder: a filter removes poisoned training images" in out
    run = next((tmp_path / "runs").glob("smoke-*"))
    results = pd.read_csv(run / "results.csv")
    rows = {r.defense: r for r in results.itertuples()}
    assert set(rows) == {"none", "patchsearch", "icutmix", "distill", "clean-model"}
    for defense in ("patchsearch", "icutmix"):
        assert isinstance(rows[defense].not_applicable, str) and pd.isna(rows[defense].clean_acc)
    for defense in ("none", "clean-model"):  # the random-trigger control beside each ASR
        assert 0 <= rows[defense].control_badencoder_asr <= 100 and np.isfinite(rows[defense].control_asr)
    cache = tmp_path / "runs" / "cache"
    backdoors = [p.parent.name for p in cache.glob("backdoor/*/DONE")]
    pretrains = [p.parent.name for p in cache.glob("pretrain/*/DONE")]
    assert rows["none"].encoder_key == backdoors[0]  # the encoder under threat is the backdoored one
    assert rows["clean-model"].encoder_key == pretrains[0] and len(pretrains) == 1  # one clean encoder, no retrain
    meta = json.loads((cache / "backdoor" / backdoors[0] / "DONE").read_text())
    assert meta["clean"] == pretrains[0]  # fine-tuned from that clean encoder
    assert 0 < rows["none"].attack_utility_cos <= 1 and rows["none"].n_poison == 0
    # the repairer: a fresh student distilled from the backdoored encoder on half the clean split, evaluated
    student = rows["distill"]
    assert student.encoder_key not in (rows["none"].encoder_key, rows["clean-model"].encoder_key)
    assert student.mitigate_s > 0 and 0 <= student.clean_acc <= 100 and not pd.isna(student.badencoder_asr)
    [log] = cache.glob("mitigate/*/distill.json")
    assert json.loads(log.read_text())["images"] == 120 and len(json.loads(log.read_text())["epochs"]) == 2
    figures = run / "figures" / "badencoder_t0_r1_s0"
    for name in ("attack_triggers.png", "attack_references_t0.png", "attack_patched_t0.png"):
        assert (figures / name).is_file(), name

    monkeypatch.setattr(console, "width", 300)  # one line per cell
    assert main([*_args(tmp_path), "--dry-run"]) == 0
    plan = capsys.readouterr().err
    assert "backdoor cached" in plan and "clean encoder cached" in plan and "n/a" in plan


def test_badencoders_asr_counts_the_target_class_and_ours_does_not():
    from benchsuite.eval.metrics import attack_success_rate, target_share

    # rows: true class, columns: predicted; target 1. 10 target-class images (all to 1), 20 others (5 to 1)
    cm = np.array([[15, 5, 0], [0, 10, 0], [0, 0, 0]])
    assert target_share(cm, 1) == 100 * 15 / 30  # BadEncoder: every triggered image
    assert attack_success_rate(cm, 1) == 100 * 5 / 20  # PatchSearch: the non-target images only


def test_the_badencoder_table_reads_ca_ba_asr_and_asr_b():
    from benchsuite.reporting.tables import badencoder_frame

    base = {"dataset": "cifar10", "attack": "badencoder", "threat": "model", "target": 9, "rate": 1.0}
    models = (("none", 70.0, 99.0, 98.9), ("clean-model", 72.0, 10.0, 0.5))
    rows = [{**base, "seed": s, "defense": d, "clean_acc": acc + s * (d == "none"),
             "badencoder_asr": asr + s * (d != "none"), "patched_asr": ours}
            for s in (0, 1) for d, acc, asr, ours in models]
    rows += [{**base, "seed": 0, "defense": "patchsearch", "not_applicable": "a filter removes poisoned training "
              "images; this threat poisons no training data"}]
    frame = badencoder_frame(pd.DataFrame(rows))
    none = frame[frame[("", "Defense")] == "w/o Defense"].iloc[0]
    assert none[("BadEncoder", "CA")] == "72.0 ± 0.0 (n=2)" and none[("BadEncoder", "BA")].startswith("70.5")
    assert none[("BadEncoder", "ASR")] == "99.0 ± 0.0 (n=2)" and none[("BadEncoder", "ASR-B")].startswith("10.5")
    assert none[("Ours", "ASR w/o target")].startswith("98.9")
    ps = frame[frame[("", "Defense")] == "PatchSearch"].iloc[0]
    assert ps[("BadEncoder", "ASR")] == "n/a"
    assert badencoder_frame(pd.DataFrame([{**base, "threat": "data", "seed": 0, "defense": "none",
                                           "clean_acc": 1.0, "badencoder_asr": 1.0}])) is None


def test_a_downstream_dataset_other_than_the_pretraining_one(tmp_path):
    """BadEncoder's setting: the probe trains and is scored on another dataset; the references come from it."""
    downstream = ["--set", 'downstream.name="synthetic"', "--set", "downstream.options.num_classes=5",
                  "--set", "downstream.options.train_per_class=12", "--set", "downstream.options.val_per_class=6",
                  "--set", "downstream.options.generator_seed=7"]
    assert main([*_args(tmp_path), "--defense", "none", *downstream]) == 0
    run = next((tmp_path / "runs").glob("smoke-*"))
    results = pd.read_csv(run / "results.csv")
    for row in results.itertuples():  # the probe predicts the downstream task's 5 classes, not the 10 of pre-training
        assert len(json.loads(row.patched_confusion)) == 5
    from benchsuite.data.loaders import load_synthetic

    task = load_synthetic(train_per_class=12, val_per_class=6, num_classes=5, generator_seed=7)
    cache = tmp_path / "runs" / "cache"
    with np.load(next(cache.glob("backdoor/*/backdoor-images.npz"))) as saved:
        reference = saved["reference_0"][0]
    members = task.train.images[task.train.labels == 0]
    assert any((reference == m).all() for m in members)  # a downstream image of the target class
    patched = np.load(next(cache.glob("patched/*/images.npy")))
    assert len(patched) == len(task.val)


def test_the_projection_prices_the_backdoor_and_one_clean_encoder_per_seed():
    from benchsuite.settings.config import build_config, read_preset
    from benchsuite.settings.registry import get_registry
    from benchsuite.tools.projection import DataShape, Measurements, project
    from benchsuite.tools.throughput import Rate

    data = read_preset("badencoder-cpu")
    data["grid"]["seeds"] = [0, 1]
    config = build_config(data)
    shape = DataShape(40_000, 10_000, 32, 10, "test")
    m = Measurements(Rate(100.0, 64, 3), Rate(1000.0, 64, 3), probe_s=1.0, feature_dim=256)
    stages = {s.name: s for s in project(config, get_registry(), shape, m)}
    assert stages["pretrain: clean reference"].runs == 2 and "pretrain: poisoned encoder" not in stages
    backdoor = stages["backdoor: badencoder"]
    assert backdoor.runs == 2 and backdoor.seconds_each == pytest.approx(12 * 10_000 / 100.0)


def test_a_bad_trigger_or_target_is_refused_before_the_clean_encoder_trains(tmp_path, capsys):
    for extra, message in ((["--set", "attack.badencoder.trigger_side=40"], "does not fit"),
                           (["--set", 'attack.badencoder.trigger="/nonexistent.png"'], "trigger file"),
                           (["--targets", "12"], "12")):
        assert main([*_args(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and message in err and "Traceback" not in err
    assert not list((tmp_path / "runs" / "cache").glob("pretrain/*/DONE"))  # refused before any training
