"""i-CutMix: boxes and lambda, the mixed losses of every method, determinism, and composition after a filter."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from benchsuite.api import Defense, Detection, config_from_options
from benchsuite.api.hookspecs import hookimpl
from benchsuite.cli import main
from benchsuite.core.errors import BenchError
from benchsuite.defenses.icutmix import ICutMix, ICutMixConfig, ICutMixMethod, draw_box
from benchsuite.engine.grid import GridRunner, cells
from benchsuite.settings.config import apply_override, build_config, read_preset
from benchsuite.settings.registry import build_registry, discover_plugins, get_registry
from benchsuite.ssl.base import SSLMethod
from benchsuite.ssl.trainer import TrainConfig, pretrain
from benchsuite.stages import Stages
from benchsuite.stages import pretrain as pretrain_stage
from tests.conftest import TINY_OVERRIDES
from tests.test_ssl_methods import build

REGISTRY = get_registry()
MIXING = [n for n in REGISTRY.names("ssl") if REGISTRY.get("ssl", n).supports_mixing()]
CPU = torch.device("cpu")


def _views(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randn(n, 3, 32, 32, generator=gen)


def test_box_and_lambda_statistics():
    gen = torch.Generator().manual_seed(0)
    boxes = [draw_box(32, 32, 1.0, gen, CPU) for _ in range(2000)]
    drawn = np.array([b.drawn for b in boxes])
    lam = np.array([b.lam for b in boxes])
    area = np.array([(b.y1 - b.y0) * (b.x1 - b.x0) for b in boxes])
    assert drawn.min() >= 0.5 and drawn.max() <= 1
    assert 0.73 < drawn.mean() < 0.77  # E[max(u, 1 - u)] = 3/4 for u ~ Beta(1, 1)
    assert 0.5 <= lam.mean() <= 1
    np.testing.assert_allclose(lam, 1 - area / (32 * 32))  # lambda is recomputed from the clipped box
    assert (lam >= drawn - 1e-12).all()  # clipping and rounding only shrink the box
    assert (area > 0).mean() > 0.9


def test_mix_pastes_the_box_of_the_permuted_image():
    method = ICutMix().wrap_method(build("simclr"))
    method.generator = torch.Generator().manual_seed(3)
    view = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 32, 32).clone()  # image i is all i
    for _ in range(5):
        mixed, perm, lam = method.mix(view)
        changed = (mixed != view).any(1)
        for i in range(8):
            if perm[i] != i:
                assert changed[i].float().mean().item() == pytest.approx(1 - lam[i].item())
                assert (mixed[i][:, changed[i]] == perm[i]).all()
        assert (lam == lam[0]).all() and 0.5 <= lam[0] <= 1  # one lambda per view batch


def test_the_same_generator_gives_the_same_mix():
    method = ICutMix().wrap_method(build("simclr"))
    view = _views(8)[0]
    method.generator = torch.Generator().manual_seed(5)
    first = method.mix(view)
    method.generator = torch.Generator().manual_seed(5)
    for a, b in zip(first, method.mix(view)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("paste", ["black", "noise"])
def test_ablation_pastes_train_on_the_own_target(paste):
    method = ICutMix(ICutMixConfig(paste=paste)).wrap_method(build("simclr"))
    method.generator = torch.Generator().manual_seed(0)
    view = _views(8)[0]
    mixed, _, lam = method.mix(view)
    assert (lam == 1).all() and not torch.equal(mixed, view)
    method = ICutMix(ICutMixConfig(weighted_loss=False)).wrap_method(build("simclr"))
    method.generator = torch.Generator().manual_seed(0)
    assert (method.mix(view)[2] == 1).all()


def _options(name):
    # i-Mix's MoCo ("mocon") contrasts the batch's keys too: the plain loss that matches it
    return {"batch_negatives": True} if name == "moco_v2" else {}


@pytest.mark.parametrize("name", MIXING)
def test_mixed_loss_with_lambda_one_equals_the_plain_loss(name):
    method = build(name, **_options(name))
    twin, other = copy.deepcopy(method), copy.deepcopy(method)
    v1, v2 = _views()
    gen = torch.Generator().manual_seed(1)
    perm = torch.cat([torch.randperm(4, generator=gen), torch.randperm(4, generator=gen) + 4])
    plain = method.loss(v1, v2)
    mixed = twin.mixed_loss(torch.cat([v1, v2]), torch.cat([v2, v1]), perm, torch.ones(8))
    torch.testing.assert_close(mixed, plain, rtol=1e-5, atol=1e-6)
    shifted = torch.cat([torch.arange(1, 5) % 4, torch.arange(1, 5) % 4 + 4])  # no image is its own partner
    assert not torch.allclose(other.mixed_loss(torch.cat([v1, v2]), torch.cat([v2, v1]), shifted,
                                               torch.full((8,), 0.5)), plain)


@pytest.mark.parametrize("name", MIXING)
def test_the_second_target_is_the_permuted_image(name):
    """lam = 0 with perm p scores row i against row p(i) of the other views: as lam = 1 with those rows moved to i."""
    method = build(name)
    mixed, other = torch.cat(_views(seed=2)), torch.cat(_views(seed=3))
    p = torch.cat([torch.tensor([2, 0, 3, 1]), torch.tensor([1, 3, 0, 2]) + 4])
    by_perm = copy.deepcopy(method).mixed_loss(mixed, other, p, torch.zeros(8))
    moved = copy.deepcopy(method).mixed_loss(mixed, other[p], torch.arange(8), torch.ones(8))
    torch.testing.assert_close(by_perm, moved, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MIXING)
def test_icutmix_with_an_empty_box_is_the_plain_method(name):
    method = build(name, **_options(name))
    wrapped = ICutMix(ICutMixConfig(alpha=1e-6)).wrap_method(copy.deepcopy(method))  # lambda = 1: no box
    wrapped.generator = torch.Generator().manual_seed(0)
    v1, v2 = _views()
    torch.testing.assert_close(wrapped.loss(v1, v2), method.loss(v1, v2), rtol=1e-5, atol=1e-6)


def test_the_wrapper_trains_the_wrapped_backbone_and_refuses_methods_without_a_mixed_loss():
    inner = build("byol")
    wrapped = ICutMix().wrap_method(inner)
    assert isinstance(wrapped, ICutMixMethod) and wrapped.backbone is inner.backbone
    assert ICutMix.kind == "training"
    assert not any(k.startswith("backbone.") for k in wrapped.state_dict())  # no duplicated tensors

    class NoMix(SSLMethod):
        name = "nomix"
        Config = dict

    with pytest.raises(BenchError, match="ssl method nomix does not define: use moco_v3, moco_v2, byol or simclr"):
        ICutMix().wrap_method(NoMix(inner.backbone))


@pytest.mark.parametrize("options, message", [
    ({"alpha": 0.0}, "defense icutmix.alpha = 0.0 must be > 0"),
    ({"paste": "grey"}, "paste = 'grey' is unknown: set defense.icutmix.paste to one of image, black, noise"),
])
def test_bad_icutmix_config(options, message):
    with pytest.raises(BenchError, match=message):
        config_from_options(ICutMixConfig, options, "defense icutmix")


def test_resume_with_icutmix_matches_an_uninterrupted_run(tiny_splits, tmp_path):
    images = tiny_splits.train.images[:48]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.5, warmup_epochs=1)

    def method(seed=0):
        return ICutMix().wrap_method(build("moco_v3", seed=seed))

    full = pretrain(method(), images, cfg, seed=1, workdir=tmp_path / "full")

    class Stop(Exception):
        pass

    interrupted = method()
    original, calls = interrupted.after_step, {"n": 0}

    def after_step(progress):
        original(progress)
        calls["n"] += 1
        if calls["n"] == 4:  # 3 steps an epoch: stopped inside the second
            raise Stop

    interrupted.after_step = after_step
    with pytest.raises(Stop):
        pretrain(interrupted, images, cfg, seed=1, workdir=tmp_path / "resume")
    resumed = pretrain(method(seed=9), images, cfg, seed=1, workdir=tmp_path / "resume")
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


# -- composition: filter, then retrain the kept images with the training-time defense -------------------
@pytest.fixture
def trace(monkeypatch):
    """What the pipeline did, in order: ("detect", defense) and ("pretrain", images, method class)."""
    events = []
    real_pretrain, real_detect = pretrain_stage.pretrain, Stages.detect

    def pretrain_spy(method, images, *args, **kwargs):
        events.append(("pretrain", len(images), type(method).__name__))
        return real_pretrain(method, images, *args, **kwargs)

    def detect_spy(self, defense, *args, **kwargs):
        events.append(("detect", defense.name))
        return real_detect(self, defense, *args, **kwargs)

    monkeypatch.setattr(pretrain_stage, "pretrain", pretrain_spy)
    monkeypatch.setattr(Stages, "detect", detect_spy)
    return events


def _retrained_after_detection(events, n_train):
    detect = events.index(next(e for e in events if e[0] == "detect"))
    retrain = events.index(("pretrain", n_train, "ICutMixMethod"))
    return detect < retrain


def test_patchsearch_then_icutmix_filters_then_retrains_the_kept_images(tmp_path, tiny_args, trace, capsys):
    options = ("classifier_iterations=20", "classifier_models=1", "classifier_width=4", "pictures=0",
               "clusters_per_class=2", "min_flip_fraction=0")
    fast = [x for item in options for x in ("--set", f"defense.patchsearch.{item}")]
    argv = ["run", "--defense", "none,icutmix,patchsearch+icutmix", "--no-reference", *tiny_args, *fast]
    assert main(argv) == 0
    assert "PatchSearch + i-CutMix" in capsys.readouterr().out
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name != "cache")
    results = pd.read_csv(run_dir / "results.csv").set_index("defense")
    assert set(results.index) == {"none", "icutmix", "patchsearch+icutmix"}
    composed = results.loc["patchsearch+icutmix"]
    assert composed["removed"] > 0 and composed["n_train"] == 240 - composed["removed"]
    assert results.loc["icutmix", "n_train"] == 240
    assert ("pretrain", 240, "ICutMixMethod") in trace  # i-CutMix alone: the whole poisoned set
    assert _retrained_after_detection(trace, composed["n_train"])
    assert len({results.loc[d, "encoder_key"] for d in results.index}) == 3
    # a training-time defense costs its pretraining; the composed one its detection, then its retraining
    assert results.loc["icutmix", "cost_defense_s"] == results.loc["icutmix", "cost_pretrain_s"] > 0
    assert composed["cost_forward_images"] > 0 and composed["cost_pretrain_s"] > 0


@dataclass(frozen=True)
class DropFirstConfig:
    n: int = 24


class DropFirst(Defense):
    """A third-party filter: removes the first n images."""

    name = "dropfirst"
    kind = "filter"
    Config = DropFirstConfig

    def detect(self, ctx) -> Detection:
        remove = np.zeros(len(ctx.images), dtype=bool)
        remove[: self.config.n] = True
        return Detection(remove.astype(float), remove)


class ThirdParty:
    @hookimpl
    def benchsuite_defenses(self):
        return [DropFirst]


def test_a_third_party_filter_composes_with_icutmix(tmp_path, trace):
    registry = build_registry([*discover_plugins()[0], ("thirdparty", ThirdParty())])
    data = read_preset("smoke")
    for item in [*TINY_OVERRIDES, "grid.reference=false", 'grid.defenses=["dropfirst+icutmix"]']:
        apply_override(data, item)
    config = build_config(data)
    runner = GridRunner(config, registry, tmp_path)
    rows = {row["defense"]: row for row in runner.run_cell(cells(config)[0])}
    assert rows["dropfirst+icutmix"]["n_train"] == 216 and rows["dropfirst+icutmix"]["removed"] == 24
    assert _retrained_after_detection(trace, 216)
