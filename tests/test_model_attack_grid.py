"""A model attack (BadEncoder) through the grid: the backdoor stage on the seed's clean encoder, its pictures,
the clean reference row, the data-level defenses declared n/a, and ``--dry-run``'s plan."""

from __future__ import annotations

import json

import pandas as pd

from benchsuite.cli import main
from benchsuite.core.console import console
from tests.conftest import TINY_OVERRIDES

QUICK = ["attack.badencoder.epochs=1", "attack.badencoder.batch_size=64"]


def _args(tmp_path, *extra: str) -> list[str]:
    args = ["run", "--attack", "badencoder", "--defense", "none,patchsearch,icutmix", "--preset", "smoke",
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
    assert set(rows) == {"none", "patchsearch", "icutmix", "clean-model"}
    for defense in ("patchsearch", "icutmix"):
        assert isinstance(rows[defense].not_applicable, str) and pd.isna(rows[defense].clean_acc)
    cache = tmp_path / "runs" / "cache"
    backdoors = [p.parent.name for p in cache.glob("backdoor/*/DONE")]
    pretrains = [p.parent.name for p in cache.glob("pretrain/*/DONE")]
    assert rows["none"].encoder_key == backdoors[0]  # the encoder under threat is the backdoored one
    assert rows["clean-model"].encoder_key == pretrains[0] and len(pretrains) == 1  # one clean encoder, no retrain
    meta = json.loads((cache / "backdoor" / backdoors[0] / "DONE").read_text())
    assert meta["clean"] == pretrains[0]  # fine-tuned from that clean encoder
    assert 0 < rows["none"].attack_utility_cos <= 1 and rows["none"].n_poison == 0
    figures = run / "figures" / "badencoder_t0_r1_s0"
    for name in ("attack_triggers.png", "attack_references_t0.png", "attack_patched_t0.png"):
        assert (figures / name).is_file(), name

    monkeypatch.setattr(console, "width", 300)  # one line per cell
    assert main([*_args(tmp_path), "--dry-run"]) == 0
    plan = capsys.readouterr().err
    assert "backdoor cached" in plan and "clean encoder cached" in plan and "n/a" in plan
