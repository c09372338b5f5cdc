"""Run configuration: TOML presets turned into dataclasses, with command-line overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from benchsuite.errors import BenchError
from benchsuite.eval.probe import ProbeConfig
from benchsuite.ssl.trainer import TrainConfig

PRESETS = ("smoke", "small", "small-cpu", "paper", "paper-mocov3-vitb", "paper-mocov2-r18", "paper-byol-r18")


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Coerce a TOML value to the annotated type (nested dataclasses, tuples, scalars, ``X | None``)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            tp, origin = options[0], typing.get_origin(options[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BenchError(f"{where} must be a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"{where} must be a list, got {value!r}")
        item = args[0]
        return tuple(_convert(item, v, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise BenchError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``cls`` from a dict, refusing unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise BenchError(f"unknown key(s) {', '.join(unknown)} in [{where}]: known are {', '.join(sorted(names))}")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def read_preset(name_or_path: str) -> dict[str, Any]:
    """The TOML table of a built-in preset (smoke, small, paper) or of a .toml file."""
    path = Path(name_or_path)
    try:
        if path.suffix == ".toml":
            if not path.is_file():
                raise BenchError(f"preset file {path} not found: check the path")
            text, name = path.read_text(), path.stem
        elif name_or_path in PRESETS:
            text = resources.files("benchsuite.presets").joinpath(f"{name_or_path}.toml").read_text()
            name = name_or_path
        else:
            raise BenchError(f"unknown preset {name_or_path!r}: use {', '.join(PRESETS)} or a .toml file")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"preset {name_or_path} is not valid TOML ({err}): fix the file") from err
    data.setdefault("preset", name)
    base = data.pop("extends", None)
    if base is not None:  # a preset may start from another and change only what differs
        if base == name_or_path:
            raise BenchError(f"preset {name_or_path} extends itself: fix its `extends` key")
        return _merged(read_preset(base), data)
    return data


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
