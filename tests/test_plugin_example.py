"""The example third-party plugin in plugins/: installed with pip, listed, and run through `bench run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY_OVERRIDES

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "benchsuite-example"
BENCH = [sys.executable, "-m", "benchsuite.cli"]


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True)


def _installed_in_environment() -> str:
    """Where this interpreter's environment (no PYTHONPATH) has benchsuite-example, or 'absent'."""
    probe = ("import importlib.metadata as m\ntry:\n    print(m.distribution('benchsuite-example').locate_file(''))\n"
             "except m.PackageNotFoundError:\n    print('absent')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> tuple[dict[str, str], str]:
    """The example installed into a folder of its own, put first on PYTHONPATH: the environment, and a
    user's own install of the example in it, are never touched (nothing to uninstall afterwards)."""
    before = _installed_in_environment()
    target = tmp_path_factory.mktemp("plugin-site")
    result = _pip("install", "--no-deps", "--target", str(target), str(PLUGIN))
    if result.returncode != 0:
        pytest.fail(f"pip could not install the example plugin:\n{result.stderr}")
    path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}, before


def test_example_plugin_is_listed_and_runs_in_the_grid(installed_plugin, tmp_path):
    env, before = installed_plugin
    assert _installed_in_environment() == before, "installing the example changed the environment"
    listed = subprocess.run([*BENCH, "list"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "dense-cluster" in listed.stdout and "example" in listed.stdout

    sets = [x for item in TINY_OVERRIDES for x in ("--set", item)]
    run = subprocess.run([*BENCH, "run", "--defense", "none,dense-cluster", "--out", str(tmp_path), *sets],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    results = pd.read_csv(next(p for p in tmp_path.iterdir() if p.name != "cache") / "results.csv")
    row = results[results["defense"] == "dense-cluster"].iloc[0]
    # the filter removed 5 % of the training set and the suite retrained on the rest
    assert row["removed"] == round(0.05 * 240) and row["n_train"] == 240 - row["removed"]
    assert 0 <= row["recall"] <= 100 and 0 <= row["precision"] <= 100
