"""The pluggy registry: built-ins through entry points, failures, name clashes; every plugin checked."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

from benchsuite.api import Attack, Defense
from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.errors import BenchError
from benchsuite.settings.registry import build_registry, get_registry

REGISTRY = get_registry()


def test_builtins_are_registered_through_entry_points():
    assert {"htba"} <= set(REGISTRY.names("attack"))
    assert {"none"} <= set(REGISTRY.names("defense"))
    assert {"synthetic", "npz", "imagefolder", "cifar10", "stl10"} <= set(REGISTRY.names("dataset"))
    assert {"simclr", "moco_v2", "byol"} <= set(REGISTRY.names("ssl"))
    assert REGISTRY.items["attack"]["htba"].plugin == "htba"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(BenchError, match="unknown attack 'nope': known are .*htba"):
        REGISTRY.get("attack", "nope")


def _plugin(name: str, attack_name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    class Fake(Attack):
        name = attack_name

    @hookimpl
    def benchsuite_attacks():
        return [Fake]

    module.benchsuite_attacks = benchsuite_attacks
    return module


def test_two_plugins_claiming_one_name_is_a_clear_error():
    with pytest.raises(BenchError, match="two plugins claim the attack name 'x'.*'a' and 'b'"):
        build_registry([("a", _plugin("a", "x")), ("b", _plugin("b", "x"))])


def test_a_broken_plugin_is_reported_and_the_others_still_load():
    broken = types.ModuleType("broken")

    @hookimpl
    def benchsuite_attacks():
        raise RuntimeError("boom")

    broken.benchsuite_attacks = benchsuite_attacks
    registry = build_registry([("good", _plugin("good", "g")), ("broken", broken)],
                              failed={"unimportable": "ImportError: no module named foo"})
    assert registry.names("attack") == ["g"]
    assert "boom" in registry.failed["broken"]
    assert "unimportable" in registry.failed


@pytest.mark.parametrize("name", REGISTRY.names("attack"))
def test_every_attack_declares_a_threat_and_a_config_and_patches_deterministically(name, tiny_splits):
    cls = REGISTRY.get("attack", name)
    assert issubclass(cls, Attack) and dataclasses.is_dataclass(cls.Config)
    assert cls.threat in REGISTRY.names("threat_protocol")
    a, b = (cls().patch_val(tiny_splits.val, 1, seed=3) for _ in range(2))
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == tiny_splits.val.images.shape and (a.images != tiny_splits.val.images).any()


@pytest.mark.parametrize("name", [n for n in REGISTRY.names("attack") if REGISTRY.get("attack", n).threat == "data"])
def test_every_data_attack_poisons_deterministically(name, tiny_splits):
    cls = REGISTRY.get("attack", name)
    attack = cls()
    if "trigger_size" in {f.name for f in dataclasses.fields(cls.Config)}:
        attack = cls(cls.Config(trigger_size=6))
    a = attack.poison(tiny_splits.train, [1], 0.5, seed=3)
    b = attack.poison(tiny_splits.train, [1], 0.5, seed=3)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert a.poison_mask.any() and a.train.images.shape == tiny_splits.train.images.shape
    patched = attack.patch_val(tiny_splits.val, 1, seed=3)
    assert patched.images.shape == tiny_splits.val.images.shape


@pytest.mark.parametrize("name", REGISTRY.names("defense"))
def test_every_defense_declares_a_kind_and_a_config(name):
    cls = REGISTRY.get("defense", name)
    assert issubclass(cls, Defense)
    assert cls.kind in ("none", "filter", "training", "detector", "repairer")
    assert dataclasses.is_dataclass(cls.Config)


@pytest.mark.parametrize("name", REGISTRY.names("ssl"))
def test_every_ssl_method_gives_a_finite_loss_that_trains(name):
    torch.manual_seed(0)
    backbone = REGISTRY.get("backbone", "resnet18")(32, width=8, stem_stride=2)
    method = REGISTRY.get("ssl", name)(backbone)
    x1, x2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for step in range(8):
        loss = method.loss(x1, x2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step((step + 1) / 8)
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", REGISTRY.names("backbone"))
def test_every_backbone_returns_pooled_features(name):
    model = REGISTRY.get("backbone", name)(32, width=8)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, model.num_features)


def test_a_preset_extends_another_and_options_tables_replace(tmp_path):
    from benchsuite.settings.config import build_config, read_preset

    child = tmp_path / "child.toml"
    child.write_text('extends = "paper"\n[ssl]\nmethod = "byol"\n[ssl.method_options]\ntau = 0.9\n'
                     '[defense.poisoncam]\nnum_masks = 8\n')
    config = build_config(read_preset(str(child)))
    assert config.preset == "child" and config.dataset.name == "imagefolder"  # from paper
    assert config.ssl.method_options == {"tau": 0.9}  # replaced, not merged with MoCo's queue options
    assert config.defense["poisoncam"]["num_masks"] == 8 and config.defense["poisoncam"]["num_clusters"] == 1000


def test_ssl_flag_applies_the_presets_recipe_for_that_method_and_set_still_wins(tmp_path):
    from benchsuite.cli import _config_from_args, parser

    preset = tmp_path / "tuned.toml"
    preset.write_text('extends = "smoke"\n[recipes.byol.train]\noptimizer = "adam"\nlr = 1e-3\n'
                      '[recipes.byol.ssl.method_options]\ntau = 0.98\n')

    def config(*argv):
        return _config_from_args(parser().parse_args(["run", "--preset", str(preset), *argv]))

    plain = config()
    assert plain.ssl.method == "simclr" and plain.train.optimizer == "sgd" and plain.train.lr == 0.5
    byol = config("--ssl", "byol")
    assert byol.ssl.method == "byol" and byol.ssl.method_options == {"tau": 0.98}
    assert byol.train.optimizer == "adam" and byol.train.lr == 1e-3
    # what the child's recipe leaves out comes from smoke's own byol recipe (merged), else from [train]
    assert byol.train.epochs == 20 and byol.train.batch_size == 64 and plain.train.epochs == 15
    assert config("--ssl", "byol", "--set", "train.lr=0.002").train.lr == 0.002
    simclr = config("--ssl", "simclr")  # no recipe: the preset's training values, the method's defaults
    assert simclr.train.optimizer == "sgd" and simclr.ssl.method_options == {}
    moco = config("--ssl", "moco_v2")  # the recipe the tuned preset inherits from smoke
    assert moco.train.optimizer == "sgd" and moco.ssl.method_options["queue_size"] == 512


def test_dataset_flag_keeps_the_options_the_new_loader_takes():
    from benchsuite.cli import _config_from_args, parser

    def dataset(*argv):
        return _config_from_args(parser().parse_args(["run", *argv, "--data-path", "x"])).dataset

    cpu = dataset("--preset", "small-cpu", "--dataset", "npz")  # the preset names cifar10 (torchvision)
    assert cpu.name == "npz" and cpu.options == {"limit_train_per_class": 1000, "limit_val_per_class": 200}
    assert dataset("--preset", "smoke", "--dataset", "npz").options == {}  # the generator's sizes do not apply
    assert dataset("--preset", "smoke").options["train_per_class"] == 500
