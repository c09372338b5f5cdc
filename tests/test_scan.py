"""``bench scan``: detectors and a repairer on a checkpoint without a grid; bad checkpoints and defenses refused."""

from __future__ import annotations

import json

import pytest
import torch

from benchsuite.cli import main
from benchsuite.core.checkpoint import load_into, save_tensors
from benchsuite.settings.config import apply_override, build_config, read_preset
from benchsuite.settings.registry import get_registry
from benchsuite.stages import Stages
from tests.conftest import TINY_OVERRIDES

QUICK = ["defense.decree.shadow_images=16", "defense.decree.batch_size=8", "defense.decree.max_epochs=2",
         "defense.distill.epochs=1", "defense.distill.fraction=0.5", "defense.distill.batch_size=32",
         "defense.distill.queue_size=64"]


def _stages(tmp_path) -> Stages:
    data = read_preset("smoke")
    for item in TINY_OVERRIDES:
        apply_override(data, item)
    return Stages(build_config(data), get_registry(), tmp_path / "unused-cache")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    torch.manual_seed(3)
    backbone = _stages(folder).build_method().backbone
    path = folder / "downloaded.safetensors"
    save_tensors(path, backbone.state_dict())
    return path


def _args(tmp_path, checkpoint, defenses: str) -> list[str]:
    args = ["scan", "--checkpoint", str(checkpoint), "--defense", defenses, "--device", "cpu",
            "--out", str(tmp_path / "runs")]
    for item in [*TINY_OVERRIDES, *QUICK]:
        args += ["--set", item]
    return args


def test_scan_prints_each_verdict_and_writes_the_trigger_and_the_repaired_encoder(tmp_path, checkpoint, capsys):
    assert main(_args(tmp_path, checkpoint, "decree,distill")) == 0
    out = capsys.readouterr().out
    assert "decree" in out and "pl1" in out and "distill" in out
    (folder,) = (tmp_path / "runs").glob("scan-downloaded-*")
    findings = {f["defense"]: f for f in json.loads((folder / "scan.json").read_text())["findings"]}
    decree = findings["decree"]
    assert decree["kind"] == "detector" and isinstance(decree["trojaned"], bool)
    # the stored verdict of the inspect stage is the one reported
    (verdict_file,) = (tmp_path / "runs" / "cache" / "inspect").glob("*/verdict.json")
    stored = json.loads(verdict_file.read_text())
    assert decree["score"] == pytest.approx(stored["score"]) and decree["trojaned"] == stored["trojaned"]
    assert decree["threshold"] == pytest.approx(stored["threshold"])
    assert (folder / "decree_reversed_trigger.png").stat().st_size > 1000
    repaired = findings["distill"]["repaired"]
    assert findings["distill"]["trojaned"] is None and repaired.endswith("distill_repaired.safetensors")
    student = _stages(tmp_path).build_method().backbone
    load_into(student, folder / "distill_repaired.safetensors")  # strict: the recipe's architecture
    original = _stages(tmp_path).build_method().backbone
    load_into(original, checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), original.state_dict().values()))
    # the scanned encoder is the checkpoint as it is: the pretrain stage ran no epoch
    (pretrained,) = (tmp_path / "runs" / "cache" / "pretrain").glob("*/encoder.safetensors")
    loaded = _stages(tmp_path).build_method().backbone
    load_into(loaded, pretrained)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))


@pytest.mark.parametrize(("defenses", "message"), [
    ("patchsearch", "bench scan takes detectors and repairers"),
    ("decree,decree", "names a defense twice"),
    ("nosuch", "nosuch"),
])
def test_scan_refuses_defenses_it_cannot_run(tmp_path, checkpoint, capsys, defenses, message):
    assert main(_args(tmp_path, checkpoint, defenses)) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "error:" in text and message in text and "Traceback" not in text


def test_scan_refuses_bad_checkpoints_in_one_line(tmp_path, capsys):
    wide = tmp_path / "wide.safetensors"
    save_tensors(wide, {"conv.weight": torch.zeros(3, 3)})
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)
    for path, message in ((wide, "does not match the model"), (pickled, "pickled objects"),
                          (tmp_path / "missing.safetensors", "not found")):
        assert main(_args(tmp_path, path, "decree")) == 2
        out = capsys.readouterr()
        lines = [line for line in (out.out + out.err).splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (path, out)
