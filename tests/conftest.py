"""Shared fixtures: tiny generated data and a tiny, fast run configuration."""

from __future__ import annotations

import pytest

from benchsuite.data.synthetic import make_synthetic

# a grid cell that trains in a few seconds on 2 CPU cores
TINY_OVERRIDES = [
    "dataset.options.train_per_class=24",
    "dataset.options.val_per_class=8",
    "train.epochs=1",
    "train.batch_size=64",
    "ssl.backbone_options.width=8",
    "probe.seeds=[1]",
    "probe.label_fraction=0.5",
]


@pytest.fixture(scope="session")
def tiny_splits():
    return make_synthetic(num_train_per_class=20, num_val_per_class=6, image_size=32, seed=0)


@pytest.fixture
def tiny_args(tmp_path):
    """CLI arguments for a tiny grid in a fresh output folder."""
    args = ["--out", str(tmp_path / "runs")]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    return args
