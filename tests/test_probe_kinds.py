"""The probes on planted features: separable classes are learned by every kind, the MLP (BadEncoder's
downstream classifier) included, deterministically for a seed; its defaults are BadEncoder's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from benchsuite.core.errors import BenchError
from benchsuite.eval.probe import ProbeConfig, fit_probe


def planted(n_per_class: int = 60, classes: int = 4, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    return (centres[labels] + rng.standard_normal((len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize("kind", ["linear", "knn", "mlp"])
def test_every_probe_kind_learns_planted_classes(kind):
    feats, labels = planted()
    test_feats, test_labels = planted(seed=0)[0] + 0.1, labels
    cfg = replace(ProbeConfig(), kind=kind, label_fraction=1.0, mlp_epochs=40, knn_k=10)
    predict = fit_probe(feats, labels, 4, cfg, seed=1)
    assert (predict(test_feats) == test_labels).mean() > 0.95
    shuffled = fit_probe(feats, np.random.default_rng(0).permutation(labels), 4, cfg, seed=1)
    assert (shuffled(test_feats) == test_labels).mean() < 0.6  # control: shuffled labels teach nothing


def test_the_mlp_is_badencoders_and_deterministic_for_a_seed():
    cfg = ProbeConfig()
    assert (cfg.mlp_hidden, cfg.mlp_dropout, cfg.mlp_lr, cfg.mlp_batch_size, cfg.mlp_epochs) == \
        ((512, 256), 0.5, 1e-4, 64, 500)
    feats, labels = planted()
    quick = replace(cfg, kind="mlp", label_fraction=1.0, mlp_epochs=3, mlp_lr=1e-3)
    noisy = feats + np.random.default_rng(5).standard_normal(feats.shape).astype(np.float32) * 3
    a = fit_probe(feats, labels, 4, quick, seed=2)(noisy)
    b = fit_probe(feats, labels, 4, quick, seed=2)(noisy)
    c = fit_probe(feats, labels, 4, quick, seed=3)(noisy)
    assert (a == b).all() and not (a == c).all()


def test_an_unknown_probe_kind_is_refused():
    with pytest.raises(BenchError, match="linear, knn, mlp, lincls"):
        fit_probe(*planted(), 4, replace(ProbeConfig(), kind="svm"), seed=0)


def test_five_probe_seeds_draw_five_different_class_balanced_splits():
    from benchsuite.eval.probe import labelled_split

    labels = np.repeat(np.arange(4), 50)
    splits = [labelled_split(labels, 0.1, seed) for seed in range(5)]
    assert len({tuple(s) for s in splits}) == 5
    for s in splits:  # floor(0.1 x 50) = 5 images of every class, none twice
        assert np.bincount(labels[s], minlength=4).tolist() == [5, 5, 5, 5] and len(set(s)) == len(s)
    np.testing.assert_array_equal(labelled_split(labels, 0.1, 3), splits[3])  # a seed is one split


def test_splits_vary_with_the_cell_seed_only_when_asked():
    from types import SimpleNamespace

    from benchsuite.stages.probe import ProbeStage

    def seeds(vary: bool, cell_seed: int) -> list[int]:
        stage = SimpleNamespace(config=SimpleNamespace(probe=replace(ProbeConfig(), seeds=(1, 2),
                                                                     vary_with_seed=vary)))
        return ProbeStage.split_seeds(stage, cell_seed)

    assert seeds(False, 0) == seeds(False, 7) == [1, 2]
    assert seeds(True, 0) != seeds(True, 7) and len(set(seeds(True, 0))) == 2
    assert seeds(True, 3) == seeds(True, 3)
