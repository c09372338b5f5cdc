"""Every bad input a new user tried, against ``bench run / table / publish / report``.

Each case must end with exit code 2 and exactly one ``error:`` line that names the fix, no traceback,
and must leave every finished stage of an earlier good run in the same ``--out`` in place.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchsuite.cli import main
from tests.conftest import TINY_OVERRIDES

DATA_SETS = [s for s in TINY_OVERRIDES if s.startswith("dataset.")]
OTHER_SETS = [s for s in TINY_OVERRIDES if not s.startswith("dataset.")]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@dataclass
class Env:
    root: Path  # the bad files
    out: Path  # --out of the good run
    run_dir: Path
    done: list[Path]  # the good run's finished stage folders


def _npz(folder: Path, train: tuple, val: tuple) -> None:
    folder.mkdir(parents=True)
    for name, (x, y) in (("d_train.npz", train), ("d_test.npz", val)):
        np.savez(folder / name, x=x, y=y)


def _images(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _make_files(root: Path, run_dir: Path) -> None:
    labels = np.array([0, 1] * 4)
    good_val = (_images(4), np.array([0, 1, 0, 1]))
    _npz(root / "strlabels", (_images(8), np.array(["cat", "dog"] * 4)), good_val)
    _npz(root / "onehot", (_images(8), np.eye(2, dtype=np.int64)[labels]), good_val)
    _npz(root / "empty", (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64)), good_val)
    _npz(root / "floatlabels", (_images(8), labels + 0.5), good_val)
    _npz(root / "sizes", (_images(8), labels), (_images(4, size=16), np.array([0, 1, 0, 1])))
    _npz(root / "absent", (_images(8), labels), (_images(6), np.array([0, 1, 2, 0, 1, 2])))
    _npz(root / "neglabels", (_images(8), labels - 1), good_val)
    _npz(root / "xfloat", (_images(8).astype(np.float32), labels), good_val)
    (root / "noxy").mkdir()
    for split in ("train", "test"):
        np.savez(root / "noxy" / f"d_{split}.npz", a=_images(2), b=np.zeros(2))
    _npz(root / "good", (_images(8), labels), good_val)
    for split in ("train", "val"):
        (root / "folder" / split / "a").mkdir(parents=True)
        Image.fromarray(_images(1)[0]).save(root / "folder" / split / "a" / "ok.png")
    (root / "folder" / "train" / "a" / "broken.png").write_bytes(b"not a png")
    (root / "notafolder").mkdir()

    (root / "self.toml").write_text('extends = "self.toml"\n')
    (root / "a.toml").write_text('extends = "b.toml"\n')
    (root / "b.toml").write_text('extends = "a.toml"\n')
    (root / "latin1.toml").write_bytes("# préréglage\n[train]\nepochs = 1\n".encode("latin-1"))
    (root / "broken.toml").write_text("[train\nepochs = 1\n")
    (root / "notcsv.png").write_bytes(b"not a png")
    (root / "afile").write_text("I am a file\n")

    (root / "empty.toml").write_text("")
    (root / "comments.toml").write_text("# nothing set yet\n")
    (root / "dangling").symlink_to(root / "no" / "such" / "folder")
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    for split in ("train", "val"):
        (root / "oneclass" / split / "only").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_images(3)[i]).save(root / "oneclass" / split / "only" / f"{i}.png")
    (root / "nonnumeric").mkdir()
    frame = (run_dir / "results.csv").read_text().splitlines()
    cols = frame[0].split(",")
    cells = frame[1].split(",")
    cells[cols.index("clean_acc")] = "ninety"
    (root / "nonnumeric" / "results.csv").write_text("\n".join([frame[0], ",".join(cells), *frame[2:]]) + "\n")
    torch.save({"not": "tensors", "epoch": 3}, root / "notstate.pt")
    torch.save(torch.nn.Linear(2, 2), root / "pickled.pt")
    (root / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    (root / "truncated.pt").write_bytes(b"PK\x03\x04 truncated")
    torch.save({"weight": torch.zeros(3, 3)}, root / "mismatch.pt")

    header = (run_dir / "results.csv").read_text().splitlines()[0]
    for name, text in (("headeronly", header + "\n"), ("missingcols", "dataset,attack\nsynthetic,htba\n"),
                       ("garbage", '"unterminated,\n1,2,3\n')):
        (root / name).mkdir()
        (root / name / "results.csv").write_text(text)
    (root / "lb_corrupt").mkdir()
    (root / "lb_corrupt" / "synthetic__htba.csv").write_text('a,b\n1,2,3,4\n"x\n')


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    """One tiny good run; every case then runs against its --out."""
    root = tmp_path_factory.mktemp("bad_input")
    out = root / "runs"
    assert main(["run", "--out", str(out), *_sets(TINY_OVERRIDES), "--no-reference"]) == 0
    done = sorted(p.parent for p in (out / "cache").glob("*/*/DONE"))
    assert {p.parent.name for p in done} >= {"dataset", "poison", "pretrain", "features", "probe"}
    run_dir = next(p for p in out.iterdir() if p.name != "cache")
    _make_files(root, run_dir)
    return Env(root, out, run_dir, done)


# (command, arguments, what the error line must say). In `run` cases the tiny settings and the good
# run's --out come first; {d} is the folder of bad files, {run} the good run's folder.
CASES = [
    # -- names and paths (handled before this test) ------------------------------------------
    ("unknown-attack", "run", ["--attack", "nope"], r"unknown attack 'nope': known are"),
    ("unknown-defense", "run", ["--defense", "nope"], r"unknown defense 'nope': known are"),
    ("unknown-dataset", "run", ["--dataset", "nope"], r"unknown dataset 'nope': known are"),
    ("unknown-ssl", "run", ["--ssl", "nope"], r"unknown ssl 'nope': known are"),
    ("unknown-preset", "run", ["--preset", "huge"], r"unknown preset 'huge': use smoke"),
    ("missing-preset-file", "run", ["--preset", "{d}/nope.toml"], r"nope.toml not found: check the path"),
    ("broken-toml", "run", ["--preset", "{d}/broken.toml"], r"not valid TOML .*: fix the file"),
    ("target-out-of-range", "run", ["--targets", "12"], r"target class 12 is out of range"),
    ("negative-target", "run", ["--targets=-1"], r"target class -1 is out of range"),
    ("targets-not-ints", "run", ["--targets", "a"], r"must look like 0,1"),
    ("seeds-not-ints", "run", ["--seeds", "a,b"], r"must be comma-separated integers"),
    ("rates-not-numbers", "run", ["--rates", "x"], r"must be comma-separated fractions"),
    ("npz-missing-path", "run", ["--dataset", "npz", "--data-path", "/does/not/exist"], r"does not exist: pass"),
    ("npz-no-path", "run", ["--dataset", "npz"], r"needs a path: --data-path"),
    ("npz-no-files", "run", ["--dataset", "npz", "--data-path", "{d}/notafolder"], r"no \*train\*.npz file"),
    ("npz-no-xy", "run", ["--dataset", "npz", "--data-path", "{d}/noxy"], r"lacks arrays 'x' and 'y'"),
    ("npz-float-images", "run", ["--dataset", "npz", "--data-path", "{d}/xfloat"], r"must be \(N,H,W,3\) uint8"),
    ("npz-negative-labels", "run", ["--dataset", "npz", "--data-path", "{d}/neglabels"], r"labels must lie in"),
    ("imagefolder-no-split", "run", ["--dataset", "imagefolder", "--data-path", "{d}/notafolder"],
     r"must contain train/<class>/ and val/<class>/"),
    ("corrupt-image", "run", ["--dataset", "imagefolder", "--data-path", "{d}/folder"],
     r"cannot read image .*broken.png .*: delete or replace the file"),
    ("trigger-too-large", "run", ["--trigger-size", "40"], r"larger than the 32px image: lower --trigger-size"),
    ("trigger-missing", "run", ["--trigger", "/no/such.png"], r"trigger file /no/such.png not found"),
    ("trigger-not-image", "run", ["--trigger", "{d}/notcsv.png"], r"not a readable image .*: re-export it"),
    ("set-unknown-key", "run", ["--set", "train.nope=1"], r"unknown key\(s\) nope in \[config.train\]"),
    ("set-no-equals", "run", ["--set", "train.epochs"], r"must look like section.key=value"),
    ("set-float-for-int", "run", ["--set", "train.epochs=1.5"], r"train.epochs must be int"),
    ("unknown-optimizer", "run", ["--set", "train.optimizer=foo"], r"unknown optimizer 'foo'"),
    ("batch-size-1", "run", ["--set", "train.batch_size=1"], r"batch_size = 1 must be >= 2"),
    ("unknown-attack-option", "run", ["--set", "attack.htba.nope=1"], r"unknown option\(s\) nope for attack htba"),
    ("bad-composition", "run", ["--defense", "poisoncam+none"], r"cannot compose poisoncam\+none"),
    ("checkpoint-missing", "run", ["--checkpoint", "{d}/nope.pt"], r"nope.pt not found"),
    ("checkpoint-not-state-dict", "run", ["--checkpoint", "{d}/notstate.pt"], r"not a state dict"),
    ("checkpoint-corrupt", "run", ["--checkpoint", "{d}/corrupt.safetensors"], r"is corrupt"),
    ("checkpoint-mismatch", "run", ["--checkpoint", "{d}/mismatch.pt"], r"does not match the model"),
    ("table-no-results", "table", ["{d}/notafolder"], r"no results.csv in .*: pass a run directory"),
    ("report-no-results", "report", ["{d}/notafolder"], r"no results.csv in .*: pass a run directory"),
    ("publish-no-results", "publish", ["{d}/notafolder"], r"no results.csv in .*: pass a run directory"),
    ("table-garbage", "table", ["{d}/garbage"], r"not a readable results file"),
    ("workers-zero", "run", ["--workers", "0"], r"--workers 0 must be at least 1"),
    ("trigger-size-zero", "run", ["--set", "attack.htba.trigger_size=0.0"], r"htba.trigger_size = 0.0 must be > 0"),
    ("set-text-for-float", "run", ["--set", "train.lr=fast"], r"train.lr must be float, got 'fast'"),
    ("class-list-missing", "run", ["--dataset", "imagefolder", "--data-path", "{d}/folder", "--set",
                                   "dataset.options.class_list=/no/such.txt"], r"class list /no/such.txt not found"),
    # -- what cannot be measured (issue #16, 2) ----------------------------------------------
    ("rate-rounds-to-zero", "run", ["--rates", "0.01"], r"poisons 0 of the 24 training images of class 0"),
    ("target-absent-from-train", "run", ["--dataset", "npz", "--data-path", "{d}/absent", "--targets", "2"],
     r"class 2 has no training images"),
    ("rate-above-one", "run", ["--rates", "1.5"], r"grid.rates .*1.5.* must be in \(0, 1\]"),
    ("rate-zero", "run", ["--rates", "0"], r"grid.rates .*0.* must be in \(0, 1\]"),
    ("epochs-zero", "run", ["--set", "train.epochs=0"], r"train.epochs = 0 .*--checkpoint"),
    ("epochs-negative", "run", ["--set", "train.epochs=-1"], r"train.epochs = -1"),
    ("epochs-bool", "run", ["--set", "train.epochs=true"], r"train.epochs must be int, got True"),
    ("synthetic-option-typo", "run", ["--set", "dataset.options.train_per_clas=5"],
     r"unknown option\(s\) train_per_clas for dataset synthetic: known are .*train_per_class"),
    ("npz-option-typo", "run", ["--dataset", "npz", "--data-path", "{d}/good", "--set",
                                "dataset.options.limit_train_per_clas=5"],
     r"unknown option\(s\) limit_train_per_clas for dataset npz"),
    ("npz-float-labels", "run", ["--dataset", "npz", "--data-path", "{d}/floatlabels"],
     r"integer class indices, got float64"),
    ("npz-image-sizes", "run", ["--dataset", "npz", "--data-path", "{d}/sizes"],
     r"32px training images but 16px validation images"),
    ("probe-no-seeds", "run", ["--set", "probe.seeds=[]"], r"probe.seeds is empty"),
    ("probe-bad-kind", "run", ["--set", "probe.kind=svm"], r"probe.kind 'svm'"),
    ("probe-bad-fraction", "run", ["--set", "probe.label_fraction=0"], r"probe.label_fraction = 0.0"),
    ("empty-grid", "run", ["--set", "grid.seeds=[]"], r"grid.seeds is empty"),
    ("defense-option-typo", "run", ["--set", "defense.poisoncam.windw=3"],
     r"unknown option\(s\) windw for defense poisoncam"),
    ("unregistered-attack-section", "run", ["--set", "attack.htab.trigger_size=3"],
     r"attack.htab: no attack named htab"),
    ("ssl-option-typo", "run", ["--set", "ssl.method_options.temperatur=0.5"],
     r"unknown option\(s\) temperatur for ssl method simclr"),
    ("backbone-unknown", "run", ["--backbone", "nope"], r"unknown backbone 'nope': use one of .*timm"),
    ("dataset-option-type", "run", ["--set", "dataset.options.image_size=big"],
     r"dataset.options.image_size must be int, got 'big'"),
    ("options-not-a-table", "run", ["--set", "ssl.backbone_options=3"], r"ssl.backbone_options must be a table"),
    ("location-length", "run", ["--set", "attack.htba.train_location=[0.2]"],
     r"attack.htba.train_location must be a list of 2"),
    # -- tracebacks before (issue #16, 2) ------------------------------------------------------
    ("npz-string-labels", "run", ["--dataset", "npz", "--data-path", "{d}/strlabels"],
     r"integer class indices, got <U3"),
    ("npz-one-hot-labels", "run", ["--dataset", "npz", "--data-path", "{d}/onehot"], r"one-hot\? save y.argmax"),
    ("npz-empty", "run", ["--dataset", "npz", "--data-path", "{d}/empty"], r"training split .* no images"),
    ("trigger-size-text", "run", ["--set", "attack.htba.trigger_size=abc"],
     r"attack htba.trigger_size must be float, got 'abc'"),
    ("preset-extends-itself", "run", ["--preset", "{d}/self.toml"], r"extends itself"),
    ("preset-extends-cycle", "run", ["--preset", "{d}/a.toml"], r"extends cycle: .*a.toml -> .*b.toml -> .*a.toml"),
    ("preset-not-utf8", "run", ["--preset", "{d}/latin1.toml"], r"not UTF-8 .*: save it as UTF-8"),
    ("table-missing-columns", "table", ["{d}/missingcols"], r"lacks column\(s\) .*target"),
    ("table-header-only", "table", ["{d}/headeronly"], r"has no rows"),
    ("report-missing-columns", "report", ["{d}/missingcols"], r"lacks column\(s\) .*target"),
    ("report-header-only", "report", ["{d}/headeronly"], r"has no rows"),
    ("publish-corrupt-leaderboard", "publish", ["{run}", "--leaderboards", "{d}/lb_corrupt"],
     r"synthetic__htba.csv is not a readable leaderboard"),
    ("publish-leaderboards-is-file", "publish", ["{run}", "--leaderboards", "{d}/afile"],
     r"--leaderboards .*afile is a file"),
    ("report-output-is-folder", "report", ["{run}", "--output", "{d}/notafolder"],
     r"--output .*notafolder is a folder: name the HTML file"),
    ("device-unknown", "run", ["--device", "foo"], r"device 'foo': use auto, cpu, cuda"),
    ("seeds-negative", "run", ["--seeds=-1"], r"grid.seeds .*-1.* must be >= 0"),
    ("seeds-empty-string", "run", ["--seeds", ""], r"--seeds '' names no seed"),
    ("rates-empty-string", "run", ["--rates", ""], r"--rates '' names no rate"),
    ("out-is-file", "run", ["--out", "{d}/afile"], r"--out .*afile is a file"),
    ("checkpoint-pickled", "run", ["--checkpoint", "{d}/pickled.pt"],
     r"holds pickled objects, not only tensors: save model.state_dict\(\)"),
    ("checkpoint-truncated", "run", ["--checkpoint", "{d}/truncated.pt"], r"is not a readable torch file"),
    # -- ranges, lists and files a new user still got wrong (issue #27) -------------------------
    ("backbone-width-zero", "run", ["--set", "ssl.backbone_options.width=0"],
     r"ssl.backbone_options.width = 0 must be >= 1"),
    ("backbone-option-type", "run", ["--set", "ssl.backbone_options.stem_stride=1.5"],
     r"ssl.backbone_options.stem_stride must be int"),
    ("lr-negative", "run", ["--set", "train.lr=-0.1"], r"train.lr = -0.1 must be > 0"),
    ("lr-zero", "run", ["--set", "train.lr=0"], r"train.lr = 0.0 must be > 0"),
    ("lr-nan", "run", ["--set", "train.lr=nan"], r"train.lr = nan must be a finite number"),
    ("lr-inf", "run", ["--set", "train.lr=inf"], r"train.lr = inf must be a finite number"),
    ("weight-decay-negative", "run", ["--set", "train.weight_decay=-1"], r"train.weight_decay = -1.0 must be >= 0"),
    ("momentum-above-one", "run", ["--set", "train.momentum=1.5"], r"train.momentum = 1.5 must be >= 0 and <= 1"),
    ("probe-lr-negative", "run", ["--set", "probe.lr=-1"], r"probe.lr = -1.0 must be > 0"),
    ("attack-epochs-zero", "run", ["--set", "attack.badencoder.epochs=0"], r"badencoder.epochs = 0 must be >= 1"),
    ("defense-lr-nan", "run", ["--set", "defense.decree.lr=nan"], r"decree.lr = nan must be a finite number"),
    ("epochs-float-argument", "run", ["--epochs", "2.5"], r"argument --epochs: invalid int value: '2.5'"),
    ("duplicate-seeds", "run", ["--seeds", "0,0"], r"grid.seeds names 0 more than once"),
    ("duplicate-targets", "run", ["--targets", "1,1"], r"grid.targets names 1 more than once"),
    ("duplicate-defenses", "run", ["--defense", "poisoncam,poisoncam"], r"grid.defenses names poisoncam more"),
    ("duplicate-attacks", "run", ["--attack", "htba,htba"], r"grid.attacks names htba more than once"),
    ("duplicate-rates", "run", ["--rates", "0.5,0.5"], r"grid.rates names 0.5 more than once"),
    ("preset-empty", "run", ["--preset", "{d}/empty.toml"], r"empty.toml sets nothing"),
    ("preset-comments-only", "run", ["--preset", "{d}/comments.toml"], r"comments.toml sets nothing"),
    ("out-dangling-symlink", "run", ["--out", "{d}/dangling"], r"--out .*dangling is a dangling symbolic link"),
    ("out-symlink-loop", "run", ["--out", "{d}/loop_a"], r"--out .*loop_a is a symbolic link that loops"),
    ("max-hours-zero", "run", ["--max-hours", "0"], r"--max-hours 0.0 must be > 0"),
    # far beyond any threshold (10^8 epochs of 240 images: thousands of hours), so no machine starts it
    ("epochs-huge", "run", ["--set", "train.epochs=100000000", "--max-hours", "1"],
     r"projected to take about \d+ h .* on this machine .*pass --yes"),
    ("imagefolder-one-class", "run", ["--dataset", "imagefolder", "--data-path", "{d}/oneclass"],
     r"one class"),
    ("table-non-numeric-cell", "table", ["{d}/nonnumeric"], r"clean_acc .*'ninety'"),
    ("report-non-numeric-cell", "report", ["{d}/nonnumeric"], r"clean_acc .*'ninety'"),
]


def _argv(env: Env, command: str, extra: list[str]) -> list[str]:
    extra = [a.format(d=env.root, run=env.run_dir) for a in extra]
    if command != "run":
        return [command, *extra]
    own_data = any(a in ("--dataset", "--preset") for a in extra)
    own_out = [] if "--out" in extra else ["--out", str(env.out)]
    return ["run", *own_out, *_sets(OTHER_SETS if own_data else TINY_OVERRIDES), "--no-reference", *extra]


@pytest.mark.parametrize("command, extra, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_keeps_finished_stages(env, capsys, command, extra, message):
    code = main(_argv(env, command, extra))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2, text
    assert len(errors) == 1, text
    assert "Traceback" not in text and "weights_only" not in text, text
    assert re.search(message, errors[0]), errors[0]  # each message names the fix
    missing = [p for p in env.done if not (p / "DONE").is_file()]
    assert not missing, f"finished stages deleted: {missing}"


def test_no_traceback_reaches_the_terminal(tmp_path):
    """The same through the installed entry point, in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "benchsuite.cli", "run", "--device", "foo", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if line.startswith("error:")]
