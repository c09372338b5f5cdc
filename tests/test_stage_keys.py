"""Key completeness (issue #22): every config field, changed one at a time, changes the key of exactly the
stages that read it (directly or through an upstream key), and a code version bump recomputes its stage and
what depends on it, nothing else."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from benchsuite.api import config_from_options, hookimpl
from benchsuite.attacks.htba import HTBA
from benchsuite.data.loaders import load_synthetic
from benchsuite.defenses.patchsearch import PatchSearch
from benchsuite.defenses.sslcleanse import SSLCleanse
from benchsuite.settings.config import apply_override, build_config, read_preset
from benchsuite.settings.registry import build_registry, discover_plugins
from benchsuite.ssl.simclr import SimCLR
from benchsuite.sslcleanse.config import MITIGATION_ONLY
from benchsuite.stages import Cell, Stages
from tests.conftest import TINY_OVERRIDES

CELL = Cell("htba", (0,), 0.5, 0)
ALL = {"dataset", "poison", "patched", "pretrain:threat", "pretrain:clean", "features:threat", "probe:threat",
       "probe:clean", "detect", "inspect:threat", "inspect:clean", "repair"}
ENCODERS = {"pretrain:threat", "pretrain:clean", "features:threat", "probe:threat", "probe:clean", "detect",
            "inspect:threat", "inspect:clean", "repair"}
ATTACK = {"poison", "patched", "pretrain:threat", "features:threat", "probe:threat", "probe:clean", "detect",
          "inspect:threat", "repair"}

# the values a string (or None) field is changed to; every other type is changed by :func:`changed`
ALTERNATIVES: dict[str, Any] = {
    "preset": "small", "device": "cpu", "dataset.name": "synthetic", "ssl.method": "byol",
    "ssl.backbone": "resnet10", "train.optimizer": "adamw", "train.augment2": {"flip_prob": 0.0},
    "probe.kind": "knn", "attack.htba.trigger": "glyph", "attack.htba.paste_space": "native",
    "defense.patchsearch.cluster_score": "sum", "defense.patchsearch.flip_score": "any",
    "defense.patchsearch.compat": "code", "defense.patchsearch.cam_layer": "layer3",
    "defense.sslcleanse.clusters": 4, "defense.sslcleanse.mask_penalty": "mask_pattern",
    "defense.sslcleanse.mitigate_when": "never", "train.lr_drop_epochs": [1], "train.snapshots": [1],
    "grid.targets": [[1]], "grid.attacks": ["multi_target"], "grid.defenses": ["patchsearch"],
    "downstream": {"name": "synthetic", "options": {"train_per_class": 6, "val_per_class": 4}},
}
# fields whose only valid value is the current one: nothing to change them to (said here, not skipped silently)
FIXED = {"train.augment.crop_impl": "one implementation (torchvision) is accepted"}


def copy_loader(path: str | None = None, **options: Any):
    """The synthetic loader under another name, accepting a path (so that ``dataset.path`` can change)."""
    return load_synthetic(**options)


class CopyDataset:
    @hookimpl
    def benchsuite_datasets(self):
        return {"synthetic-copy": copy_loader}


def changed(name: str, value: Any) -> Any:
    """Another valid value for the field ``name`` currently at ``value``."""
    if name in ALTERNATIVES:
        return ALTERNATIVES[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if 0 < value <= 1 else value + 1
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, float)) for v in value):
        return [changed(name, value[0]), *value[1:]]
    raise AssertionError(f"no rule changes {name} = {value!r}: add it to ALTERNATIVES or FIXED")


def fields_of(prefix: str, obj: Any) -> list[tuple[str, Any]]:
    """(dotted name, value) of every leaf field of a config dataclass (nested dataclasses expanded)."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += fields_of(f"{prefix}.{f.name}", value)
        else:
            out.append((f"{prefix}.{f.name}", value))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    registry = build_registry([*discover_plugins()[0], ("copy", CopyDataset())])
    data = read_preset("smoke")
    for item in [*TINY_OVERRIDES, "train.epochs=2", 'dataset.name="synthetic-copy"']:
        apply_override(data, item)
    start = root / "start.safetensors"
    start.write_bytes(b"not read: only its digest enters the key")
    return registry, data, root, start


def stage_keys(registry, data: dict, root: Path) -> dict[str, str]:
    config = build_config(copy.deepcopy(data))
    stages = Stages(config, registry, root / "cache")
    poison = stages.poison_key(CELL)
    threat = stages.pretrain_key(poison, CELL.seed)
    clean = stages.clean_encoder_key(CELL.seed)
    patchsearch, sslcleanse = stages.defense("patchsearch"), stages.defense("sslcleanse")
    return {"dataset": stages.dataset_key, "poison": poison, "patched": stages.patched_key("htba", 0, CELL.seed),
            "pretrain:threat": threat, "pretrain:clean": clean,
            "features:threat": stages.features_key(threat, "train", stages.dataset_key),
            "probe:threat": stages.probe_key(threat, CELL), "probe:clean": stages.probe_key(clean, CELL),
            "detect": stages.detect_key(patchsearch, threat, poison, CELL.seed),
            "inspect:threat": stages.inspect_key(sslcleanse, threat, CELL.seed),
            "inspect:clean": stages.inspect_key(sslcleanse, clean, CELL.seed),
            "repair": stages.repair_key(sslcleanse, threat, CELL.seed)}


def every_field(registry, data: dict) -> list[tuple[str, Any, set[str]]]:
    """(dotted field, current value, the stages expected to change key) for every field of the run config."""
    config = build_config(copy.deepcopy(data))
    # compute settings: where and with how many threads, not what (they key no stage)
    found: list[tuple[str, Any, set[str]]] = [("preset", config.preset, set()), ("device", config.device, set()),
                                              ("cpu_threads", config.cpu_threads, set())]
    # the downstream dataset: what the probe trains and is scored on, and the patched sets are made of
    found.append(("downstream", config.downstream, {"patched", "probe:threat", "probe:clean"}))
    found += [(n, v, ALL) for n, v in fields_of("dataset", config.dataset) if n != "dataset.options"]
    found += [(f"dataset.options.{k}", v, ALL) for k, v in config.dataset.options.items()]
    for name, value in fields_of("ssl", config.ssl):
        if name.endswith("_options"):
            found += [(f"{name}.{k}", v, ENCODERS) for k, v in value.items()]
        else:
            found.append((name, value, ENCODERS))
    found += [(n, v, ENCODERS) for n, v in fields_of("train", config.train)]
    found += [(n, v, {"probe:threat", "probe:clean"}) for n, v in fields_of("probe", config.probe)]
    found += [(n, v, set()) for n, v in fields_of("grid", config.grid)]  # which cells exist, not their keys
    resolved = {"attack.htba": (HTBA, ATTACK), "defense.patchsearch": (PatchSearch, {"detect"}),
                "defense.sslcleanse": (SSLCleanse, None)}
    for prefix, (cls, expected) in resolved.items():
        section, name = prefix.split(".")
        options = config_from_options(cls.Config, getattr(config, section).get(name, {}), prefix)
        for field_name, value in fields_of(prefix, options):
            if expected is None:  # SSL-Cleanse: the detection options key the verdicts, every option the repair
                short = field_name.rsplit(".", 1)[1]
                expected_here = {"repair"} if short in MITIGATION_ONLY else {"inspect:threat", "inspect:clean",
                                                                              "repair"}
            else:
                expected_here = expected
            found.append((field_name, value, expected_here))
    return found


def set_field(data: dict, name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def test_every_config_field_changes_exactly_the_stages_that_read_it(setup):
    registry, data, root, start = setup
    base = stage_keys(registry, data, root)
    assert len(set(base.values())) == len(base)  # distinct stages, distinct keys
    wrong, fields = [], every_field(registry, data)
    assert len(fields) > 100  # every section's every field, the plugins' options included
    for name, value, expected in fields:
        if name in FIXED:
            continue
        mutated = copy.deepcopy(data)
        new = str(start) if name in ("ssl.checkpoint", "dataset.path") else changed(name, value)
        set_field(mutated, name, new)
        keys = stage_keys(registry, mutated, root)
        moved = {stage for stage in base if keys[stage] != base[stage]}
        if moved != expected:
            wrong.append(f"{name}: {value!r} -> {new!r} moved {sorted(moved)}, expected {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("target, attribute, expected", [
    (HTBA, "version", ATTACK),
    (PatchSearch, "version", {"detect"}),
    (SSLCleanse, "version", {"inspect:threat", "inspect:clean", "repair"}),
    (SimCLR, "version", ENCODERS),
    (Stages, "DATASET_VERSION", ALL),
    (Stages, "POISON_VERSION", {"poison", "pretrain:threat", "features:threat", "probe:threat", "detect",
                                "inspect:threat", "repair"}),
    (Stages, "PATCHED_VERSION", {"patched", "probe:threat", "probe:clean"}),
    (Stages, "PRETRAIN_VERSION", ENCODERS),
    (Stages, "FEATURES_VERSION", {"features:threat"}),
    (Stages, "PROBE_VERSION", {"probe:threat", "probe:clean"}),
    (Stages, "DETECT_VERSION", {"detect"}),
    (Stages, "INSPECT_VERSION", {"inspect:threat", "inspect:clean"}),
    (Stages, "REPAIR_VERSION", {"repair"}),
], ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", None))
def test_a_code_version_bump_moves_its_stage_and_what_depends_on_it(setup, monkeypatch, target, attribute,
                                                                    expected):
    registry, data, root, _ = setup
    base = stage_keys(registry, data, root)
    monkeypatch.setattr(target, attribute, getattr(target, attribute) + 1)
    keys = stage_keys(registry, data, root)
    assert {stage for stage in base if keys[stage] != base[stage]} == expected


def test_an_attack_version_bump_recomputes_its_patched_set_and_the_clean_models_probe(tmp_path, monkeypatch):
    from benchsuite.engine.grid import GridRunner
    from benchsuite.settings.registry import get_registry

    data = read_preset("smoke")
    for item in [*TINY_OVERRIDES, "grid.rates=[0.5]"]:
        apply_override(data, item)
    config = build_config(data)

    def done(stage: str) -> set[str]:
        return {p.parent.name for p in (tmp_path / "cache" / stage).glob("*/DONE")}

    first = GridRunner(config, get_registry(), tmp_path).run()
    before = {stage: done(stage) for stage in ("patched", "probe", "pretrain", "poison")}
    monkeypatch.setattr(HTBA, "version", HTBA.version + 1)
    second = GridRunner(config, get_registry(), tmp_path).run()
    after = {stage: done(stage) for stage in before}
    assert len(after["patched"] - before["patched"]) == 1 and len(after["poison"] - before["poison"]) == 1
    assert len(after["probe"] - before["probe"]) == 2  # the threat encoder's and the clean model's
    assert len(after["pretrain"] - before["pretrain"]) == 1  # the threat encoder; the clean one is served
    clean_key = first.loc[first["defense"] == "clean-model", "encoder_key"].item()
    assert clean_key == second.loc[second["defense"] == "clean-model", "encoder_key"].item()
    assert clean_key in before["pretrain"]

