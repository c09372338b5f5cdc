"""The stage cache keys file inputs by content: editing a trigger or a dataset in place recomputes
exactly the stages that depend on it, and a cell result is invalidated with its stages."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
from PIL import Image

from benchsuite.cli import main
from benchsuite.data.synthetic import make_synthetic
from benchsuite.stages import features as features_stage
from benchsuite.stages import pretrain as pretrain_stage


def _results(out):
    run = next(p for p in out.iterdir() if p.name != "cache")
    return pd.read_csv(run / "results.csv").set_index("defense")


def _done(out, stage):
    return {p.name for p in (out / "cache" / stage).iterdir() if (p / "DONE").is_file()}


def _rewrite_keeping_mtime(path, write):
    """Replace ``path``'s bytes in place (same inode), then put its old mtime back."""
    before = path.stat()
    write(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


def _npz_args(tiny_args):
    """``tiny_args`` without the synthetic generator's options (the npz loader refuses them)."""
    pairs = zip(tiny_args[::2], tiny_args[1::2])
    return [a for pair in pairs if not pair[1].startswith("dataset.options.") for a in pair]


def _png(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _write_npz(folder, per_class, seed):
    folder.mkdir(parents=True)
    s = make_synthetic(per_class, 4, 32, seed, 10)
    np.savez(folder / "toy_train.npz", x=s.train.images, y=s.train.labels)
    np.savez(folder / "toy_test.npz", x=s.val.images, y=s.val.labels)


def test_trigger_edited_in_place_recomputes_what_depends_on_it(tmp_path, tiny_args, capsys):
    trigger = tmp_path / "trigger.png"
    _png(trigger, 0)
    argv = ["run", "--trigger", str(trigger), *tiny_args]
    out = tmp_path / "runs"
    assert main(argv) == 0
    first, poisons, datasets = _results(out), _done(out, "poison"), _done(out, "dataset")
    _rewrite_keeping_mtime(trigger, lambda p: _png(p, 1))
    capsys.readouterr()
    assert main(argv) == 0
    assert "already finished" not in capsys.readouterr().err  # the cell result went stale with its trigger
    second = _results(out)
    assert len(_done(out, "poison")) == len(poisons) + 1
    assert _done(out, "dataset") == datasets  # the data did not change
    assert first.loc["none", "encoder_key"] != second.loc["none", "encoder_key"]  # threat encoder retrained
    # the clean reference does not see the trigger: its encoder is reused
    assert first.loc["clean-model", "encoder_key"] == second.loc["clean-model", "encoder_key"]


def test_npz_dataset_edited_in_place_is_reloaded(tmp_path, tiny_args):
    data = tmp_path / "data"
    _write_npz(data, 12, seed=0)
    argv = ["run", "--dataset", "npz", "--data-path", str(data), "--no-reference", *_npz_args(tiny_args)]
    out = tmp_path / "runs"
    assert main(argv) == 0
    first = _results(out)

    def edit(path):
        with np.load(path) as d:
            x, y = d["x"].copy(), d["y"]
        x[:, :4] = 255 - x[:, :4]  # same shape, so the same file size
        with open(path, "r+b") as handle:  # in place: same inode
            np.savez(handle, x=x, y=y)

    _rewrite_keeping_mtime(data / "toy_train.npz", edit)
    assert main(argv) == 0
    assert len(_done(out, "dataset")) == 2
    assert first.loc["none", "encoder_key"] != _results(out).loc["none", "encoder_key"]


def test_touching_the_dataset_reloads_it_but_retrains_nothing(tmp_path, tiny_args, monkeypatch):
    data = tmp_path / "data"
    _write_npz(data, 12, seed=0)
    argv = ["run", "--dataset", "npz", "--data-path", str(data), "--no-reference", *_npz_args(tiny_args)]
    out = tmp_path / "runs"
    assert main(argv) == 0
    first = _results(out)
    os.utime(data / "toy_train.npz")  # new mtime, same bytes

    def no_training(*args, **kwargs):
        raise AssertionError("a stage that depends on the data's content only was recomputed")

    monkeypatch.setattr(pretrain_stage, "pretrain", no_training)
    monkeypatch.setattr(features_stage, "extract_features", no_training)
    assert main(argv) == 0
    assert len(_done(out, "dataset")) == 2
    pd.testing.assert_frame_equal(first, _results(out))


def test_same_relative_data_path_from_two_working_directories(tmp_path, tiny_args, monkeypatch):
    _write_npz(tmp_path / "a" / "data", 12, seed=0)
    _write_npz(tmp_path / "b" / "data", 16, seed=1)
    argv = ["run", "--dataset", "npz", "--data-path", "data", "--no-reference", *_npz_args(tiny_args)]
    monkeypatch.chdir(tmp_path / "a")
    assert main(argv) == 0
    first = _results(tmp_path / "runs")
    monkeypatch.chdir(tmp_path / "b")
    assert main(argv) == 0
    second = _results(tmp_path / "runs")
    assert (first.loc["none", "n_train"], second.loc["none", "n_train"]) == (120, 160)


def test_atomic_write_respects_the_umask(tmp_path):
    from benchsuite.core.checkpoint import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_temp_files_of_a_killed_writer_are_removed(tmp_path):
    import socket
    import subprocess
    import sys

    from benchsuite.core.checkpoint import sweep_temp_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace(".", "_")
    stale = tmp_path / "cache" / "pretrain" / "k" / f".encoder.safetensors.{host}.{dead.stdout.strip()}.ab12.tmp"
    live = tmp_path / "run" / f".results.csv.{host}.{os.getpid()}.cd34.tmp"
    for path in (stale, live):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half")
    assert sweep_temp_files(tmp_path) == 1
    assert not stale.exists() and live.exists()


def test_a_missing_trigger_is_still_a_one_line_error(tmp_path, tiny_args, capsys):
    assert main(["run", "--trigger", str(tmp_path / "trigger.png"), *tiny_args]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and "trigger.png not found" in last, last


def test_a_grid_option_added_later_moves_the_run_directory_only_when_set():
    from dataclasses import replace

    from benchsuite.engine.grid import run_id
    from benchsuite.settings.config import build_config, read_preset

    config = build_config(read_preset("smoke"))
    # the smoke run directory of the releases before grid.removal_control existed, so their runs resume
    assert run_id(config) == "smoke-synthetic-54c0ff8c", "smoke.toml changed? then update this id"
    assert run_id(replace(config, grid=replace(config.grid, removal_control=True))) != run_id(config)
