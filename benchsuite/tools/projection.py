"""How long a preset's grid would take here: dataset sizes, measured rates (:mod:`benchsuite.tools.throughput`),
stage counts.

The measurements run the suite's own code on random tensors of the preset's image size: one SSL
training step (augmentation, loss, backward, optimiser step; bf16 autocast and channels_last on
CUDA, as the trainer) and encoder forwards (as feature extraction and the filter defenses' search),
scaled linearly from the measured batch to the preset's. Stage counts follow the code: epochs x full
batches for pretraining, the iterative search's sampled images x (locator + flip-test) forwards for
PatchSearch / PoisonCAM, the classifier's iteration cap, SSL-Cleanse's epochs x clusters x images.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchsuite.api import config_from_options
from benchsuite.data.loaders import IMAGE_SUFFIXES, read_class_list
from benchsuite.nets.backbones import feature_dim
from benchsuite.poison_search.defaults import FilterDefenseConfig
from benchsuite.protocols.cell import CellPlan
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry
from benchsuite.tools.throughput import (
    Rate,
    build_method,
    classifier_rate,
    forward_rate,
    kmeans_unit_seconds,
    ssl_step_rate,
)

IMAGENET100 = (126_689, 5_000, 100)  # train, val images, classes (SSL-Backdoor's ImageNet-100 lists)
KNOWN = {"cifar10": (50_000, 10_000, 32, 10), "stl10": (5_000, 8_000, 96, 10)}  # train, val, side, classes
GRADCAM_FORWARDS = 1.2  # Grad-CAM of one image in plain forwards (README "Speed": 1.17x, tests/bench_filter.py)
INPUT_GRAD_FORWARDS = 3.0  # a forward and a backward to the input (SSL-Cleanse inversion), in forwards


@dataclass(frozen=True)
class DataShape:
    """What the projection needs of a dataset: image counts, side and classes, and where they came from."""

    train: int
    val: int
    image_size: int
    classes: int
    source: str


@dataclass
class Measurements:
    """The rates measured here (:func:`measure`) that the projection scales."""

    ssl_step: Rate  # images (two views each) per second through a training step
    forward: Rate  # images per second through the encoder in eval mode
    classifier_step: Rate | None = None  # poison classifier training images per second
    training_step: dict[str, Rate] = field(default_factory=dict)  # training-time defense name -> its step rate
    kmeans_s_per_unit: float = 0.0  # seconds per (point x centre x dim x iteration)
    probe_s: float = 0.0  # one probe fit + its predictions on val and patched val (per probe seed and encoder)
    feature_dim: int = 0  # the encoder's pooled features (k-means cost)
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    name: str
    runs: int
    work: str  # what one run does, in words
    seconds_each: float

    @property
    def seconds(self) -> float:
        return self.runs * self.seconds_each


# -- dataset sizes ----------------------------------------------------------------------------------
def _limited(total: int, classes: int, limit: int | None) -> int:
    return total if limit is None else min(total, classes * int(limit))


def _count_images(folder: Path, classes: list[str] | None) -> tuple[int, int]:
    names = classes or sorted(d.name for d in folder.iterdir() if d.is_dir())
    count = 0
    for name in names:
        for _root, _dirs, files in os.walk(folder / name):
            count += sum(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files)
    return count, len(names)


def data_shape(config: RunConfig, registry: Registry) -> DataShape:
    """The sizes of the configured dataset, without loading it where it is large.

    imagefolder: files counted under the path, or ImageNet-100's sizes when the path is missing (the
    paper preset's data is rarely on the machine that plans); cifar10 / stl10: their known sizes;
    synthetic: from its options; any other loader is called once.
    """
    spec, options = config.dataset, dict(config.dataset.options)
    loader = registry.get("dataset", spec.name)
    defaults = {k: p.default for k, p in inspect.signature(loader).parameters.items()
                if p.default is not inspect.Parameter.empty}
    opts = {**defaults, **options}
    limit_train, limit_val = opts.get("limit_train_per_class"), opts.get("limit_val_per_class")
    if spec.name == "synthetic":
        classes = int(opts.get("num_classes", 10))
        return DataShape(classes * int(opts["train_per_class"]), classes * int(opts["val_per_class"]),
                         int(opts["image_size"]), classes, "generated (options)")
    if spec.name in KNOWN:
        train, val, side, classes = KNOWN[spec.name]
        return DataShape(_limited(train, classes, limit_train), _limited(val, classes, limit_val), side, classes,
                         f"{spec.name} (known sizes)")
    if spec.name == "imagefolder":
        side = int(opts.get("image_size", 224))
        root = Path(spec.path).expanduser() if spec.path else None
        if root is None or not (root / "train").is_dir():
            train, val, classes = IMAGENET100
            where = f"{root} not found" if root else "no --data-path"
            return DataShape(_limited(train, classes, limit_train), _limited(val, classes, limit_val), side, classes,
                             f"ImageNet-100 sizes assumed ({where})")
        wanted = read_class_list(opts["class_list"]) if opts.get("class_list") else None
        train, classes = _count_images(root / "train", wanted)
        val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), root / "train")
        val, _ = _count_images(val_dir, wanted)
        return DataShape(_limited(train, classes, limit_train), _limited(val, classes, limit_val), side, classes,
                         f"files counted under {root}")
    if spec.path:
        options["path"] = str(Path(spec.path).expanduser().resolve())
    splits = loader(**options)
    return DataShape(len(splits.train), len(splits.val), splits.train.image_size, splits.train.num_classes,
                     f"{spec.name} (loaded)")


# -- measurements -----------------------------------------------------------------------------------
def probe_seconds(config: RunConfig, data: DataShape, dim: int) -> float:
    """One probe fit on the labelled split and its predictions on the clean and patched validation sets."""
    from dataclasses import replace

    from benchsuite.eval.probe import fit_probe

    rng = np.random.default_rng(0)
    labelled = min(20_000, max(data.classes, int(config.probe.label_fraction * data.train)))
    feats = rng.standard_normal((labelled, dim)).astype(np.float32)
    queries = min(20_000, 2 * data.val)
    start = time.perf_counter()
    predict = fit_probe(feats, np.arange(labelled) % data.classes, data.classes,
                        replace(config.probe, label_fraction=1.0), 0)
    predict(rng.standard_normal((queries, dim)).astype(np.float32))
    return (time.perf_counter() - start) * max(1.0, 2 * data.val / queries)


def planned_parts(plans: list[CellPlan], stage: str) -> list[Any]:
    """The defenses (parts) doing the work of the planned stages called ``stage``, once each by name."""
    found = {s.defense.name: s.defense for plan in plans for planned in plan.defenses.values()
             if not isinstance(planned, str) for s in planned if s.stage == stage and s.defense is not None}
    return list(found.values())


def measure(config: RunConfig, registry: Registry, data: DataShape, device: torch.device, seconds: float,
            plans: list[CellPlan]) -> Measurements:
    """Run the measurements within about ``seconds``: the SSL step, each training-time defense's step (i-CutMix
    changes the forward passes), encoder forwards, and with filter defenses the poison classifier's step."""
    torch.manual_seed(0)
    filters = planned_parts(plans, "detect")
    trainings = planned_parts(plans, "pretrain")
    weights = {"ssl": 5.0, "forward": 2.5, **({"classifier": 2.0} if filters else {}),
               **{t.name: 3.0 for t in trainings}}
    budget = {k: seconds * w / sum(weights.values()) for k, w in weights.items()}
    method = build_method(config, registry, data.image_size)
    ssl = ssl_step_rate(config, method, data.image_size, device, budget["ssl"])
    fwd = forward_rate(method.backbone, data.image_size, device, budget["forward"])
    dim = feature_dim(method.backbone)
    result = Measurements(ssl, fwd, device=str(device), feature_dim=dim)
    for training in trainings:
        torch.manual_seed(0)
        wrapped = training.wrap_method(build_method(config, registry, data.image_size))
        result.training_step[training.name] = ssl_step_rate(config, wrapped, data.image_size, device,
                                                            budget[training.name])
    if filters and isinstance(filters[0].config, FilterDefenseConfig):
        o = filters[0].config
        result.classifier_step = classifier_rate(o.classifier_width, o.classifier_stem_stride,
                                                 o.classifier_batch_size, data.image_size, device,
                                                 budget["classifier"])
        result.kmeans_s_per_unit = kmeans_unit_seconds(dim)
    result.probe_s = probe_seconds(config, data, dim)
    method.cpu()
    return result


# -- the projection -----------------------------------------------------------------------------------
def grid_defenses(config: RunConfig, registry: Registry) -> list[Any]:
    """The grid's defenses other than ``none``, built as the pipeline builds them (``a+b`` composed)."""
    from benchsuite.api import ComposedDefense

    def build(name: str) -> Any:
        if "+" in name:
            first, second = name.split("+", 1)
            return ComposedDefense(build(first), build(second))
        cls = registry.get("defense", name)
        return cls(config_from_options(cls.Config, config.defense.get(name, {}), f"defense {name}"))

    return [build(name) for name in dict.fromkeys(config.grid.defenses) if name != "none"]


def scored_images(n: int, clusters: int, samples: int, survivors: Callable[[int], int]) -> int:
    """Images the iterative search scores: ``samples`` per candidate cluster per iteration (clusters of equal
    size n / clusters), the candidates pruned by ``survivors`` after each iteration."""
    size, candidates, taken, total = n / max(1, clusters), clusters, 0, 0.0
    while candidates and taken < size:
        total += candidates * min(samples, size - taken)
        taken += samples
        candidates = survivors(candidates)
    return int(round(total))


def duration_text(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    if seconds < 1:
        return "<1s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def plan_cells(config: RunConfig, registry: Registry, data: DataShape) -> list[Any]:
    """The grid's cells, each with the targets its attack poisons (a multi-target attack widens a cell)."""
    from benchsuite.core.errors import BenchError
    from benchsuite.engine.grid import cells

    def expand(attack: str, targets: tuple[int, ...]) -> tuple[int, ...]:
        cls = registry.get("attack", attack)
        try:  # an attack's files (trigger images) are not needed to plan
            made = cls(config_from_options(cls.Config, config.attack.get(attack, {}), f"attack {attack}"))
        except BenchError:
            return targets
        return made.cell_targets(targets, data.classes)

    return cells(config, expand)


def grid_plans(config: RunConfig, registry: Registry, data: DataShape) -> list[CellPlan]:
    """Every cell's stages as its protocols plan them, without keys (nothing is loaded)."""
    from benchsuite.protocols.cell import defense_protocol_of, plan_cell, threat_protocol_of

    pairs = [(d, defense_protocol_of(registry, config, d)) for d in grid_defenses(config, registry)]
    plans = []
    for cell in plan_cells(config, registry, data):
        kind = registry.get("attack", cell.attack).threat
        plans.append(plan_cell(None, cell, threat_protocol_of(registry, config, kind, cell.attack), pairs,
                               config.grid.reference))
    return plans


class _Tally:
    """Stages by name in the order first met; a per-seed stage counts once per seed."""

    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}
        self.seeds: dict[str, set[int]] = {}

    def add(self, name: str, work: str, seconds_each: float, seed: int | None = None) -> None:
        if seed is not None:
            if seed in self.seeds.setdefault(name, set()):
                return
            self.seeds[name].add(seed)
        runs = self.stages[name].runs + 1 if name in self.stages else 1
        self.stages[name] = Stage(name, runs, work, seconds_each)


def project(config: RunConfig, registry: Registry, data: DataShape, m: Measurements,
            plans: list[CellPlan] | None = None) -> list[Stage]:
    """Every stage of the grid with how often it runs and its projected duration here, read off the cells'
    plans (:func:`grid_plans`): each planned stage is priced by its stage name."""
    from benchsuite.poison_search import filter_config
    from benchsuite.poison_search.search import survivors
    from benchsuite.sslcleanse.config import SSLCleanseConfig

    train = config.train
    n, v = data.train, data.val
    plans = plans if plans is not None else grid_plans(config, registry, data)
    fwd_rate = m.forward.images_per_s

    def pretrain_s(images: int, training: Any | None = None) -> float:
        rate = m.training_step.get(training.name, m.ssl_step) if training is not None else m.ssl_step
        batch = min(train.batch_size, images)
        return train.epochs * (images // batch) * batch / rate.images_per_s

    def epochs_text(images: int) -> str:
        batch = min(train.batch_size, images)
        return f"{train.epochs} epochs x {(images // batch) * batch:,} images"

    def filter_stages(tally: _Tally, flt: Any) -> None:
        if not isinstance(flt.config, FilterDefenseConfig):
            tally.add(f"detect: {flt.name} (plugin)", "not projected", float("nan"))
            return
        cfg = filter_config(flt.config, data.classes, n)
        sides = len(cfg.rsd_windows) if cfg.window == "auto" else 1
        scored = scored_images(n, cfg.num_clusters, cfg.search.samples_per_iteration,
                               lambda c, s=cfg.search: survivors(c, s))
        locate = getattr(flt.config, "num_masks", None) or GRADCAM_FORWARDS
        per_image = locate + cfg.search.flip_set_size
        kmeans_s = m.kmeans_s_per_unit * n * cfg.num_clusters * m.feature_dim * cfg.kmeans_iters
        tally.add(f"k-means: {flt.name}", f"{n:,} x {cfg.num_clusters:,} clusters", kmeans_s)
        search_work = f"{scored:,} images x ({locate:g} locator + {cfg.search.flip_set_size:,} flip) forwards"
        tally.add(f"search: {flt.name}", search_work + (f" x {sides} windows" if sides > 1 else ""),
                  sides * scored * per_image / fwd_rate)
        c = cfg.classifier
        cls_rate = m.classifier_step.images_per_s if m.classifier_step else float("nan")
        cls_s = c.models * (c.max_iterations * c.batch_size + n / 3) / cls_rate  # inference ~ 1/3 of a step
        tally.add(f"poison classifier: {flt.name}", f"<= {c.models} x {c.max_iterations:,} iterations of "
                  f"{c.batch_size} (early stop from {c.patience * c.eval_every:,})", cls_s)

    def price(tally: _Tally, name: str, planned: Any, seed: int) -> None:
        """One planned stage of defense ``name``, by its stage name."""
        per_seed = seed if planned.per_seed else None
        if planned.stage == "detect":
            filter_stages(tally, planned.defense)
        elif planned.stage == "pretrain":
            title = {"retrain": "retrain", "random removal": "random removal"}.get(planned.label, "pretrain")
            text = f"<= {epochs_text(n)} (kept images)" if planned.images == "kept" else epochs_text(n)
            tally.add(f"{title}: {name}", text, pretrain_s(n, planned.defense), per_seed)
        elif planned.stage in ("inspect", "mitigate"):
            for stage in _encoder_defense_stages(planned, n, fwd_rate, m.ssl_step.images_per_s, SSLCleanseConfig):
                tally.add(stage.name, stage.work, stage.seconds_each, per_seed)
        else:
            tally.add(f"{planned.stage}: {name} (plugin)", "not projected", float("nan"), per_seed)

    tally = _Tally()
    for plan in plans:
        for planned in plan.threat:
            if planned.stage == "pretrain" and planned.per_seed:  # a model attack's clean encoder = the reference
                tally.add("pretrain: clean reference", epochs_text(n), pretrain_s(n), plan.cell.seed)
            elif planned.stage == "pretrain":
                tally.add("pretrain: poisoned encoder", epochs_text(n), pretrain_s(n))
            elif planned.stage == "backdoor":
                tally.add(f"backdoor: {plan.cell.attack}", *_backdoor_price(config, registry, plan.cell.attack, n,
                                                                           m.ssl_step.images_per_s))
            elif planned.stage != "poison":  # poisoning is a copy of the training set
                tally.add(f"{planned.stage}: threat (plugin)", "not projected", float("nan"))
        for _reference in plan.reference:
            tally.add("pretrain: clean reference", epochs_text(n), pretrain_s(n), plan.cell.seed)
    defense_stages = _Tally()
    for plan in plans:
        for name, planned_stages in plan.defenses.items():
            for planned in [] if isinstance(planned_stages, str) else planned_stages:
                price(defense_stages, name, planned, plan.cell.seed)

    n_cells, seeds = len(plans), len({p.cell.seed for p in plans})
    targets = sum(len(p.cell.targets) for p in plans)
    reference = bool(config.grid.reference)
    evaluated = 1 + sum(not isinstance(d, str) for d in plans[0].defenses.values()) if plans else 1
    forwards = n_cells * evaluated * (n + v) + targets * evaluated * v
    if reference:
        forwards += seeds * (n + v) + targets * v
    if any(s.stage == "detect" for p in plans for d in p.defenses.values() if not isinstance(d, str) for s in d):
        forwards += n_cells * n  # the threat encoder's features of the poisoned set, shared by the filters
    encoders = max(1, n_cells * evaluated + (seeds if reference else 0))
    stages = list(tally.stages.values())
    stages.append(Stage("features (train, val, patched val)", encoders, f"{forwards // encoders:,} forwards",
                        forwards / encoders / fwd_rate))
    stages += defense_stages.stages.values()
    probes = (n_cells * evaluated + (n_cells if reference else 0)) * len(config.probe.seeds)
    stages.append(Stage(f"probe ({config.probe.kind})", probes, "fit + predict", m.probe_s))
    return stages


def _backdoor_price(config: RunConfig, registry: Registry, attack: str, n: int, ssl_rate: float) -> tuple[str, float]:
    """A model attack's fine-tune: epochs x shadow images, each a forward and backward of the clean and the
    triggered image (as an SSL step's two views); attacks without ``epochs`` / ``shadow_*`` options are not
    projected."""
    cls = registry.get("attack", attack)
    try:
        cfg = config_from_options(cls.Config, config.attack.get(attack, {}), f"attack {attack}")
    except Exception:  # noqa: BLE001 - a plan never fails on an attack's options
        return "not projected", float("nan")
    epochs, fraction, count = (getattr(cfg, k, None) for k in ("epochs", "shadow_fraction", "shadow_count"))
    if epochs is None or fraction is None:
        return "not projected", float("nan")
    shadow = count or int(round(fraction * n))
    return f"{epochs} epochs x {shadow:,} shadow images", epochs * shadow / ssl_rate


def _encoder_defense_stages(planned: Any, n: int, fwd_rate: float, ssl_rate: float,
                            cleanse_cls: type) -> list[Stage]:
    """An encoder-level defense's inspect or mitigate stage, priced for SSL-Cleanse and DECREE (one run each)."""
    from benchsuite.decree.config import DecreeConfig

    defense = planned.defense
    cfg = defense.config
    if isinstance(cfg, DecreeConfig) and planned.stage == "inspect":
        # an upper bound: the inversion stops early once its smallest valid trigger stops shrinking
        shadow = min(cfg.shadow_images, n)
        return [Stage(f"inspect: {defense.name} (at most)", 1, f"<= {cfg.max_epochs} epochs x {shadow:,} images",
                      cfg.max_epochs * shadow * INPUT_GRAD_FORWARDS / fwd_rate)]
    if not isinstance(cfg, cleanse_cls):
        return [Stage(f"{planned.stage}: {defense.name} (plugin)", 1, "not projected", float("nan"))]
    if planned.stage == "inspect":
        sample = max(1, round(cfg.ratio * n))
        k = cfg.clusters or cfg.k_max
        pool = max(1, sample - sample // k)
        pool = min(pool, cfg.inversion_images or pool)
        batch = min(cfg.batch_size, pool)
        steps = -(-pool // batch)
        work = cfg.epochs * k * (steps * batch * INPUT_GRAD_FORWARDS + min(cfg.knn_sample_num, pool))
        return [Stage(f"inspect: {defense.name}", 1, f"{cfg.epochs} epochs x {k} clusters x {pool:,} images",
                      work / fwd_rate)]
    if cfg.mitigate_when == "never":
        return []
    images = max(1, round(cfg.mitigate_ratio * n))
    mbatch = min(cfg.mitigate_batch_size, images)
    distil = cfg.mitigate_epochs * max(1, images // mbatch) * mbatch / ssl_rate
    when = " (if trojaned)" if cfg.mitigate_when == "trojaned" else ""
    return [Stage(f"mitigate: {defense.name}{when}", 1, f"{cfg.mitigate_epochs} epochs x {images:,} images", distil)]


def total_seconds(stages: list[Stage]) -> float:
    return float(sum(s.seconds for s in stages if np.isfinite(s.seconds)))
