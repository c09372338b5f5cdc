"""The grid: attacks x targets x rates x seeds, every defense on each cell, results saved as they come."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchsuite import __version__
from benchsuite.api import ComposedDefense, Defense, Poisoning
from benchsuite.cache import stable_hash
from benchsuite.checkpoint import save_json
from benchsuite.config import RunConfig
from benchsuite.console import console
from benchsuite.errors import BenchError
from benchsuite.eval.detection import removal_metrics, topk_accuracy, window_metrics
from benchsuite.pipeline import Cell, Encoder, Pipeline
from benchsuite.registry import Registry
from benchsuite.results import REFERENCE_DEFENSE, save_results


def cells(config: RunConfig) -> list[Cell]:
    g = config.grid
    return [Cell(a, tuple(t), r, s) for a, t, r, s in itertools.product(g.attacks, g.targets, g.rates, g.seeds)]


def run_id(config: RunConfig) -> str:
    """Same configuration -> same run directory, so a rerun resumes into it."""
    return f"{config.preset}-{config.dataset.name}-{stable_hash(config.to_dict(), length=8)}"


class GridRunner:
    def __init__(self, config: RunConfig, registry: Registry, out: Path) -> None:
        self.config = config
        self.registry = registry
        self.out = Path(out)
        self.run_dir = self.out / run_id(config)
        self.pipeline = Pipeline(config, registry, self.out / "cache")
        registry.get("dataset", config.dataset.name)
        # the threat encoder is trained for every cell anyway, so its "w/o Defense" column always comes first
        names = ["none", *[d for d in config.grid.defenses if d != "none"]]
        self.defenses = [self.pipeline.defense(name) for name in names]
        for cell in cells(config):  # fail fast on bad names and targets, before any training
            self.pipeline.attack(cell.attack)
        for d in self.defenses:
            if d.kind not in ("none", "filter", "training", "model", "composed"):
                raise BenchError(f"defense {d.name} is of unknown kind {d.kind!r}: a plugin's defense must be of "
                                 "kind none, filter, training or model")

    def _base_row(self, cell: Cell, defense: str, encoder_key: str) -> dict[str, Any]:
        c = self.config
        return {"dataset": c.dataset.name, "preset": c.preset, "attack": cell.attack,
                "targets": "+".join(map(str, cell.targets)), "rate": cell.rate, "seed": cell.seed,
                "defense": defense, "ssl": c.ssl.method, "backbone": c.ssl.backbone, "epochs": c.train.epochs,
                "probe": c.probe.kind, "label_fraction": c.probe.label_fraction, "encoder_key": encoder_key}

    def run(self) -> pd.DataFrame:
        """Run every cell (reusing whatever the cache holds) and return the results frame."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(self.run_dir / "config.json", {"version": __version__, "config": self.config.to_dict()})
        splits = self.pipeline.splits()
        for cell in cells(self.config):
            for t in cell.targets:
                splits.check_target(t)
        console.log(f"run directory: {self.run_dir}")
        rows: list[dict[str, Any]] = []
        all_cells = cells(self.config)
        for i, cell in enumerate(all_cells, 1):
            console.log(f"cell {i}/{len(all_cells)}: {cell.label}")
            rows += self.run_cell(cell)
            save_results(self.run_dir, rows)
        return save_results(self.run_dir, rows)

    def run_cell(self, cell: Cell) -> list[dict[str, Any]]:
        p = self.pipeline
        poisoning, poison_key = p.poisoning(cell)
        n_poison = int(poisoning.poison_mask.sum())
        threat = p.encoder(poisoning.train.images, poison_key, cell.seed, label=f"pretrain {cell.label}")
        rows = []
        for defense in self.defenses:
            rows += self._run_defense(defense, cell, poisoning, poison_key, threat, n_poison)
        if self.config.grid.reference:
            clean = self.clean_encoder(cell)
            for metrics in p.evaluate(clean, cell):
                rows.append({**self._base_row(cell, REFERENCE_DEFENSE, clean.key), **metrics,
                             "n_train": len(p.splits().train), "n_poison": 0})
        return rows

    def clean_encoder(self, cell: Cell) -> Encoder:
        """The same recipe trained on the clean training set (shared by every cell of a seed)."""
        p = self.pipeline
        return p.encoder(p.splits().train.images, stable_hash("clean", p.dataset_key), cell.seed,
                         label=f"pretrain clean s={cell.seed}")

    def _cell_folder(self, cell: Cell) -> Path:
        target = "+".join(map(str, cell.targets))
        return self.run_dir / "figures" / f"{cell.attack}_t{target}_r{cell.rate:g}_s{cell.seed}"

    def _link_figures(self, workdir: Path, cell: Cell, name: str) -> str:
        """Copy a defense's pictures (retrieved patches, attention maps) into ``<run>/figures/``."""
        folder = self._cell_folder(cell)
        copied = []
        for png in sorted(Path(workdir).glob("*.png")):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, folder / f"{name}_{png.name}")
            copied.append(str((folder / f"{name}_{png.name}").relative_to(self.run_dir)))
        return ";".join(copied)

    def _filter(self, defense: Defense, cell: Cell, poisoning: Poisoning, poison_key: str,
                threat: Encoder) -> tuple[np.ndarray, str, dict[str, Any]]:
        """Run a filter defense: the kept indices, their data key and the detection metrics."""
        detection = self.pipeline.detect(defense, threat, poisoning, poison_key, cell.seed)
        remove = detection.remove
        metrics = {**removal_metrics(remove, poisoning.poison_mask),
                   **topk_accuracy(detection.scores, poisoning.poison_mask),
                   **window_metrics(detection.scores, detection.windows, poisoning.boxes),
                   "figures": self._link_figures(Path(detection.extras["workdir"]), cell, defense.name)}
        return np.flatnonzero(~remove), stable_hash(poison_key, "kept", remove), metrics

    def _run_defense(self, defense: Defense, cell: Cell, poisoning: Poisoning, poison_key: str, threat: Encoder,
                     n_poison: int) -> list[dict[str, Any]]:
        p = self.pipeline
        extra: dict[str, Any] = {"n_train": len(poisoning.train), "n_poison": n_poison}
        images, label = poisoning.train.images, f"{defense.name} {cell.label}"
        if defense.kind == "none":
            encoder = threat
        elif defense.kind == "training":
            encoder = p.encoder(images, poison_key, cell.seed, label=f"pretrain {label}", training=defense)
        elif defense.kind in ("filter", "composed"):
            filter_defense = defense.filter if isinstance(defense, ComposedDefense) else defense
            training = defense.training if isinstance(defense, ComposedDefense) else None
            kept, kept_key, metrics = self._filter(filter_defense, cell, poisoning, poison_key, threat)
            extra.update(metrics, n_train=len(kept))
            encoder = p.encoder(images[kept], kept_key, cell.seed, label=f"retrain {label}", training=training)
        else:  # model: judge the threat and the clean encoder, evaluate the repaired threat encoder
            verdict, workdir = p.inspect(defense, threat, cell.seed)
            clean_verdict, _ = p.inspect(defense, self.clean_encoder(cell), cell.seed)
            extra.update(trojaned=verdict.trojaned, anomaly_index=verdict.anomaly_index, flagged=verdict.flagged,
                         clean_trojaned=clean_verdict.trojaned, clean_anomaly_index=clean_verdict.anomaly_index,
                         figures=self._link_figures(workdir, cell, defense.name))
            encoder = p.mitigate(defense, threat, verdict, cell.seed)
        return [{**self._base_row(cell, defense.name, encoder.key), **metrics, **extra}
                for metrics in p.evaluate(encoder, cell)]
