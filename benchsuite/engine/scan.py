"""``bench scan``: is this encoder backdoored? Encoder-level detectors (and repairers) on one checkpoint.

No grid and no attack: the checkpoint is loaded into the recipe's backbone (``--epochs 0``: evaluated as it
is), each detector inspects it on the defender's clean training images, each repairer writes a repaired
copy. Every step is a cached stage, so a rerun with one more detector only runs that detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchsuite.core.cache import stable_hash
from benchsuite.core.checkpoint import save_json, save_tensors
from benchsuite.core.console import note, set_log_file
from benchsuite.core.errors import BenchError
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry
from benchsuite.stages import Encoder, Stages, file_digest

SCAN_KINDS = ("detector", "repairer")


@dataclass
class ScanFinding:
    """One defense's answer on the scanned encoder."""

    defense: str
    kind: str
    trojaned: bool | None = None  # None: a repairer, which gives no verdict
    score: float = float("nan")
    score_name: str = ""
    threshold: float = float("nan")
    pictures: list[str] = field(default_factory=list)
    repaired: str | None = None  # the repaired encoder's file
    note: str = ""  # e.g. why a detector abstained

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in self.__dict__.items()}


def scan_defenses(names: list[str], stages: Stages) -> list:
    """The named defenses, refusing those that need a grid (filters, training-time defenses)."""
    if not names:
        raise BenchError("bench scan needs --defense: a detector or repairer, e.g. --defense decree,sslcleanse")
    if len(set(names)) != len(names):
        raise BenchError(f"--defense {','.join(names)} names a defense twice: list each once")
    defenses = [stages.defense(name) for name in names]
    for defense in defenses:
        if defense.kind not in SCAN_KINDS:
            raise BenchError(f"defense {defense.name} is a {defense.kind} defense, which needs the poisoned training "
                             "set of a grid: bench scan takes detectors and repairers (e.g. decree, sslcleanse, "
                             "distill); use bench run for the others")
    return defenses


def scan_dir(out: Path, config: RunConfig, checkpoint: Path) -> Path:
    """Same checkpoint bytes and configuration -> same folder."""
    return out / f"scan-{checkpoint.stem}-{stable_hash(file_digest(checkpoint), config.to_dict(), length=8)}"


def save_reversed_trigger(path: Path, mask: np.ndarray, pattern: np.ndarray, title: str) -> None:
    """The reversed trigger (m * delta on grey) beside its mask: there is no real trigger to hold it against."""
    from matplotlib.figure import Figure  # only when a picture is drawn

    blended = (mask[..., None] * pattern.transpose(1, 2, 0) + (1 - mask[..., None]) * 0.5).clip(0, 1)
    fig = Figure(figsize=(5.0, 2.8))
    axes = fig.subplots(1, 2)
    for ax, image, label in ((axes[0], blended, "reversed: m * delta on grey"),
                             (axes[1], mask, f"mask (sum {mask.sum():.0f} px, {100 * mask.mean():.1f} %)")):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def scan(config: RunConfig, registry: Registry, out: Path, checkpoint: Path, defense_names: list[str],
         seed: int = 0) -> tuple[list[ScanFinding], Path]:
    """Run each named detector / repairer on ``checkpoint``; returns the findings and the scan folder."""
    stages = Stages(config, registry, out / "cache")
    defenses = scan_defenses(defense_names, stages)
    folder = scan_dir(out, config, checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    set_log_file(folder / "scan.log")
    note(f"scan folder: {folder}")
    encoder: Encoder = stages.clean_encoder(seed)  # epochs 0: the checkpoint as it is, cached by its bytes
    findings = []
    for defense in defenses:
        if defense.kind == "detector":
            verdict, _ = stages.inspect(defense, encoder, seed)
            finding = ScanFinding(defense.name, defense.kind, bool(verdict.trojaned), float(verdict.score),
                                  defense.score_name, float(verdict.threshold),
                                  note="; ".join(verdict.extras.get("warnings", [])))
            found = defense.reversed_trigger(verdict)
            if found is not None:
                path = folder / f"{defense.name}_reversed_trigger.png"
                save_reversed_trigger(path, found.mask, found.pattern,
                                      f"{checkpoint.name}: {defense.name} {defense.score_name} {verdict.score:.3g}")
                finding.pictures.append(str(path))
        else:
            repaired = stages.repair(defense, encoder, None, seed)
            finding = ScanFinding(defense.name, defense.kind)
            if repaired is encoder:
                finding.note = "repaired nothing"
            else:
                path = folder / f"{defense.name}_repaired.safetensors"
                save_tensors(path, repaired.backbone.state_dict())
                finding.repaired = str(path)
        findings.append(finding)
        save_json(folder / "scan.json", {"checkpoint": str(checkpoint), "seed": seed,
                                         "findings": [f.to_dict() for f in findings]})
    return findings, folder
