"""Run configuration: TOML presets turned into dataclasses, with command-line overrides."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from benchsuite.core.cache import added_field
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import from_dict
from benchsuite.eval.probe import PROBE_KINDS, ProbeConfig
from benchsuite.ssl.trainer import TrainConfig

PRESETS = ("smoke", "smoke-detect", "small", "small-cpu", "badencoder-cpu", "paper", "paper-mocov3-vitb",
           "paper-mocov2-r18", "paper-byol-r18")


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "synthetic"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The dataset column of results and leaderboards: the folder's name for the loaders that read any
        folder (``--dataset npz --data-path data/cifar10`` -> ``cifar10``), else the loader's name."""
        if self.name in ("npz", "imagefolder") and self.path:
            return Path(self.path).name or self.name
        return self.name


@dataclass(frozen=True)
class GridSpec:
    attacks: tuple[str, ...] = ("htba",)
    defenses: tuple[str, ...] = ("none",)
    targets: tuple[tuple[int, ...], ...] = ((0,),)  # one tuple per cell; several targets = one multi-target cell
    seeds: tuple[int, ...] = (0,)
    rates: tuple[float, ...] = (1.0,)  # fraction of each target class poisoned
    reference: bool = True  # also train the same recipe on the clean data (clean-model ASR)
    # beside each filter defense, retrain after removing as many images at random (the removal's control)
    removal_control: bool = added_field(False)

    def __post_init__(self) -> None:
        examples = {"attacks": "--attack htba", "defenses": "--defense none", "targets": "--targets 0",
                    "seeds": "--seeds 0", "rates": "--rates 1.0"}
        for name, example in examples.items():
            if not getattr(self, name):
                raise BenchError(f"grid.{name} is empty: give at least one, e.g. {example}")
        for name in ("attacks", "defenses", "targets", "seeds", "rates"):
            values = getattr(self, name)
            twice = sorted({v for v in values if values.count(v) > 1}, key=str)
            if twice:
                shown = ", ".join("+".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float)
                                  else str(v) for v in twice)
                raise BenchError(f"grid.{name} names {shown} more than once (a cell would run twice into one "
                                 f"table): list each once, e.g. {examples[name]}")
        if any(not cell for cell in self.targets):
            raise BenchError("grid.targets has an empty cell: give a class per cell, e.g. --targets 0,1")
        if any(not 0 < r <= 1 for r in self.rates):
            raise BenchError(f"grid.rates {list(self.rates)} must be in (0, 1] (a fraction of the target class): "
                             "e.g. --rates 0.5,1.0")
        if any(s < 0 for s in self.seeds):
            raise BenchError(f"grid.seeds {list(self.seeds)} must be >= 0 (numpy seeds): e.g. --seeds 0,1,2")


@dataclass(frozen=True)
class SSLSpec:
    method: str = "simclr"
    backbone: str = "resnet18"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # backbone state dict to start from (with epochs = 0: evaluate it as is)


@dataclass(frozen=True)
class RunConfig:
    preset: str = "smoke"
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    attack: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack name -> options
    defense: dict[str, dict[str, Any]] = field(default_factory=dict)  # defense name -> options
    ssl: SSLSpec = field(default_factory=SSLSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    device: str = "auto"
    # the dataset the probe trains and is scored on when it is not the pre-training one (BadEncoder's
    # downstream tasks: a CIFAR-10 encoder probed on GTSRB); None: the pre-training dataset
    downstream: DatasetSpec | None = added_field(None)
    # torch CPU threads of every stage; 0: torch's default (one per core). CPU kernels split float sums by
    # thread, so a seed gives identical numbers only at the same count (and CPU); like ``device`` it keys
    # no stage, run or recipe
    cpu_threads: int = added_field(0)

    def __post_init__(self) -> None:
        _check_run(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_run(config: RunConfig) -> None:
    """Refuse settings that cannot give a measurement, before any stage runs."""
    train, probe = config.train, config.probe
    if train.epochs < 0:
        raise BenchError(f"train.epochs = {train.epochs} must be >= 0: e.g. --epochs 15")
    if train.epochs == 0 and not config.ssl.checkpoint:
        raise BenchError("train.epochs = 0 would score a randomly initialised encoder: train at least one epoch, "
                         "or evaluate a trained backbone with --checkpoint FILE --epochs 0")
    if not probe.seeds:
        raise BenchError("probe.seeds is empty: give at least one probe seed, e.g. --set probe.seeds=[4787]")
    if probe.kind not in PROBE_KINDS:
        raise BenchError(f"probe.kind {probe.kind!r} is not known: set probe.kind to one of {', '.join(PROBE_KINDS)}")
    if probe.kind == "lincls" and not (probe.lincls_epochs >= 1 and probe.lincls_batch_size >= 1
                                       and math.isfinite(probe.lincls_lr) and probe.lincls_lr > 0):
        raise BenchError("probe.lincls_epochs and lincls_batch_size must be >= 1 and lincls_lr finite and > 0 "
                         "(PatchSearch: 30, 256, 0.1)")
    if not 0 < probe.label_fraction <= 1:
        raise BenchError(f"probe.label_fraction = {probe.label_fraction} must be in (0, 1]: e.g. 0.01 (the papers)")
    if probe.epochs < 1 or probe.knn_k < 1:
        raise BenchError(f"probe.epochs = {probe.epochs} and probe.knn_k = {probe.knn_k} must be >= 1: fix them")
    if not isinstance(config.cpu_threads, int) or isinstance(config.cpu_threads, bool) or config.cpu_threads < 0:
        raise BenchError(f"cpu_threads = {config.cpu_threads!r} must be a whole number >= 0 (0: one per core), "
                         "e.g. --set cpu_threads=2")
    if not DEVICE.fullmatch(config.device):
        raise BenchError(f"device {config.device!r}: use auto, cpu, cuda or cuda:N (e.g. --device cuda:0)")


def _preset_source(name_or_path: str, folder: Path | None) -> tuple[str, str, str, Path | None]:
    """(text, name, identity, folder) of a built-in preset or a .toml file; a relative ``extends`` path is
    looked up beside the preset that names it first."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if folder is not None and not path.is_absolute() and (folder / path).is_file():
            path = folder / path
        if not path.is_file():
            raise BenchError(f"preset file {path} not found: check the path")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise BenchError(f"preset {path} is not UTF-8 ({err.reason} at byte {err.start}): save it as UTF-8") \
                from err
        except OSError as err:
            raise BenchError(f"preset {path} cannot be read ({err.strerror}): check the path") from err
        return text, path.stem, str(path.resolve()), path.resolve().parent
    if name_or_path in PRESETS:
        text = resources.files("benchsuite.presets").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
        return text, name_or_path, f"built-in {name_or_path}", None
    raise BenchError(f"unknown preset {name_or_path!r}: use {', '.join(PRESETS)} or a .toml file")


def read_preset(name_or_path: str, _chain: tuple[str, ...] = (), _folder: Path | None = None) -> dict[str, Any]:
    """The TOML table of a built-in preset (smoke, small, paper) or of a .toml file, with its ``extends``
    chain merged in (a cycle is refused)."""
    text, name, identity, folder = _preset_source(name_or_path, _folder)
    if identity in _chain:
        if identity == _chain[-1]:
            raise BenchError(f"preset {name_or_path} extends itself: remove or fix its `extends` key")
        cycle = " -> ".join([*_chain[_chain.index(identity):], identity])
        raise BenchError(f"preset extends cycle: {cycle}: remove one of these `extends` keys")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"preset {name_or_path} is not valid TOML ({err}): fix the file") from err
    if not data:
        raise BenchError(f"preset {name_or_path} sets nothing (an empty file would run the built-in defaults "
                         "unnoticed): add its settings, or start it with extends = \"smoke\"")
    data.setdefault("preset", name)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise BenchError(f"preset {name_or_path}: extends = {base!r} must be a preset name or a .toml path")
    # a preset may start from another and change only what differs
    return _merged(read_preset(base, (*_chain, identity), folder), data)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied, table by table: a nested table merges, a value replaces, and an
    options table (``method_options``, ``backbone_options``, ``options``) replaces whole, since its keys
    belong to one method, backbone or dataset."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not key.endswith("options"):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def with_method_recipe(data: dict[str, Any], method: str) -> dict[str, Any]:
    """``data`` with the preset's ``[recipes.<method>]`` tables merged in, so that a preset tuned for one SSL
    method says how it trains another (``--ssl byol`` on the smoke preset); unchanged when it has none."""
    recipe = data.get("recipes", {}).get(method)
    return data if recipe is None else _merged(data, recipe)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as TOML, else as a string) in place."""
    if "=" not in assignment:
        raise BenchError(f"--set {assignment!r} must look like section.key=value, e.g. train.epochs=2")
    dotted, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise BenchError(f"--set {dotted}: {key} is not a table")
    node[keys[-1]] = value


def build_config(data: dict[str, Any]) -> RunConfig:
    """Validate a preset table (after overrides) into a :class:`RunConfig`."""
    data = dict(data)
    data.pop("recipes", None)  # applied by with_method_recipe when --ssl picks another method
    grid = dict(data.get("grid", {}))
    if "targets" in grid:
        grid["targets"] = [t if isinstance(t, list) else [t] for t in grid["targets"]]
    data["grid"] = grid
    return from_dict(RunConfig, data)
