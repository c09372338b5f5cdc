"""What every stage shares: the run's config, the plugin registry, the stage cache and the device."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchsuite.api import Attack, ComposedDefense, Defense, Splits, config_from_options
from benchsuite.core import distributed
from benchsuite.core.cache import StageCache
from benchsuite.core.checkpoint import atomic_write
from benchsuite.core.errors import BenchError
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry


@dataclass(frozen=True)
class Cell:
    """One grid cell: an attack on one or more targets at one poison rate (data attacks), with one seed."""

    attack: str
    targets: tuple[int, ...]
    rate: float
    seed: int

    @property
    def label(self) -> str:
        return f"{self.attack} t={'+'.join(map(str, self.targets))} r={self.rate:g} s={self.seed}"


@dataclass
class Encoder:
    """A trained backbone and the cache key that identifies it."""

    key: str
    backbone: torch.nn.Module


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (a user-supplied checkpoint is part of the cache key)."""
    if not path.is_file():
        raise BenchError(f"checkpoint {path} not found: check --checkpoint")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {name} requested but CUDA is not available: use --device cpu")
    return torch.device(name)


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def save_one_array(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


class StageBase:
    """The state the stage mixins share; :class:`benchsuite.stages.Stages` combines them."""

    def __init__(self, config: RunConfig, registry: Registry, cache_root: Path) -> None:
        self.config = config
        self.registry = registry
        self.cache = StageCache(cache_root)
        self.device = distributed.setup(resolve_device(config.device))  # torchrun: this rank's GPU
        self._datasets: dict[str, tuple[Splits, str]] = {}  # spec digest -> (splits, data key)
        self._dataset_stage_keys: dict[str, str] = {}
        self._dataset_files: dict[str, Any] = {}
        self._attack_inputs: dict[str, tuple[dict[str, str], ...]] = {}
        self._start_hash: str | None = None

    @property
    def input_norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std): the normalisation every encoder of the run was trained with, which every stage that
        feeds one an image uses too (probe features, filters, detectors, repairs, model attacks)."""
        return tuple(self.config.train.augment.mean), tuple(self.config.train.augment.std)

    def attack(self, name: str) -> Attack:
        cls = self.registry.get("attack", name)
        return cls(config_from_options(cls.Config, self.config.attack.get(name, {}), f"attack {name}"))

    def defense(self, name: str) -> Defense:
        """A defense by name; ``filter+training`` (e.g. ``patchsearch+icutmix``) composes two."""
        if "+" in name:
            parts = name.split("+")
            if len(parts) != 2:
                raise BenchError(f"defense {name!r}: compose exactly two defenses, a filter and a training-time "
                                 "one, e.g. patchsearch+icutmix")
            return ComposedDefense(self.defense(parts[0]), self.defense(parts[1]))
        cls = self.registry.get("defense", name)
        return cls(config_from_options(cls.Config, self.config.defense.get(name, {}), f"defense {name}"))

    # provided by the stage mixins
    def splits(self) -> Splits:  # pragma: no cover - DatasetStage
        raise NotImplementedError

    @property
    def dataset_key(self) -> str:  # pragma: no cover - DatasetStage
        raise NotImplementedError
