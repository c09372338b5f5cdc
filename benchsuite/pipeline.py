"""The stages of one grid cell, each cached under a key of its inputs and config."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchsuite import distributed
from benchsuite.api import (
    Attack,
    ComposedDefense,
    Defense,
    Detection,
    PatchedSet,
    Poisoning,
    Verdict,
    config_from_options,
)
from benchsuite.backbones import timm_backbone
from benchsuite.cache import StageCache, file_inputs, path_fingerprint, stable_hash
from benchsuite.checkpoint import atomic_write, load_into, save_json, save_tensors
from benchsuite.config import RunConfig
from benchsuite.console import console
from benchsuite.data import ImageDataset, Splits
from benchsuite.data.store import load_splits, open_array, open_rows, remove_tree, save_array, save_rows, save_splits
from benchsuite.errors import BenchError
from benchsuite.eval.detection import CONTROL_SIZE, pasting_control
from benchsuite.eval.features import extract_features
from benchsuite.eval.metrics import (
    accuracy,
    attack_success_rate,
    confusion_matrix,
    false_positives,
    prediction_shares,
)
from benchsuite.eval.probe import fit_probe
from benchsuite.registry import Registry
from benchsuite.ssl.base import SSLMethod
from benchsuite.ssl.trainer import pretrain, snapshot_path


@dataclass(frozen=True)
class Cell:
    """One grid cell: an attack on one or more targets at one poison rate, with one seed."""

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


@dataclass
class DefenseContext:
    """What a filter or model defense sees: the (poisoned) training images and the threat encoder.

    The ground truth (which images are poisoned) is deliberately absent.
    """

    images: np.ndarray
    encoder: torch.nn.Module
    features: np.ndarray  # encoder features of ``images``
    num_classes: int
    seed: int
    device: torch.device
    workdir: Path


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (a user-supplied checkpoint is part of the cache key)."""
    if not path.is_file():
        raise BenchError(f"checkpoint {path} not found: check --checkpoint")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {name} requested but CUDA is not available: use --device cpu")
    return torch.device(name)


def _save_arrays(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def _save_array(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


class Pipeline:
    """Runs and caches the stages; one instance per ``bench run``."""

    def __init__(self, config: RunConfig, registry: Registry, cache_root: Path) -> None:
        self.config = config
        self.registry = registry
        self.cache = StageCache(cache_root)
        self.device = distributed.setup(resolve_device(config.device))  # torchrun: this rank's GPU
        self._splits: Splits | None = None
        self._data_key: str | None = None
        self._dataset_stage_key: str | None = None
        self._dataset_files: dict[str, Any] = {}
        self._attack_inputs: dict[str, tuple[dict[str, str], ...]] = {}
        self._start_hash: str | None = None

    # -- data ---------------------------------------------------------------------------------
    def _dataset_inputs(self) -> dict[str, Any]:
        """The files the dataset is read from: the resolved path and a fingerprint of what is there."""
        spec, inputs = self.config.dataset, {}
        found = path_fingerprint(spec.path) if spec.path else None
        if found:
            inputs["path"] = found
        if option_files := file_inputs(spec.options):  # e.g. imagefolder's class_list
            inputs["options"] = option_files
        return inputs

    @property
    def dataset_stage_key(self) -> str:
        """The dataset stage's key: the spec, plus the files it reads (by content) when it reads any."""
        if self._dataset_stage_key is None:
            self._dataset_files = self._dataset_inputs()
            inputs = [self._dataset_files] if self._dataset_files else []
            self._dataset_stage_key = stable_hash("dataset", self.config.dataset, *inputs)
        return self._dataset_stage_key

    @property
    def dataset_key(self) -> str:
        """The data key of every stage downstream of the dataset.

        A dataset read from files is keyed by the content of the arrays loaded from them, so a touched
        or moved but unchanged folder retrains nothing; a generated one by its spec.
        """
        self.splits()
        assert self._data_key is not None
        return self._data_key

    def splits(self) -> Splits:
        """The dataset, generated or loaded once and cached as arrays."""
        if self._splits is not None:
            return self._splits
        key, spec = self.dataset_stage_key, self.config.dataset
        by_content = key != stable_hash("dataset", spec)
        folder = self.cache.dir("dataset", key)

        def load() -> Splits:
            if by_content:
                self._data_key = stable_hash("data", self.cache.meta("dataset", key)["content"])
            if (folder / "data.npz").is_file():  # cached before the memory-mapped store (issue #15)
                with np.load(folder / "data.npz") as d:
                    classes = json.loads(str(d["classes"]))
                    geometry = {k: d[k] if k in d.files else None for k in ("train_geometry", "val_geometry")}
                    return Splits(ImageDataset(d["train_x"], d["train_y"], classes, geometry["train_geometry"]),
                                  ImageDataset(d["val_x"], d["val_y"], classes, geometry["val_geometry"]))
            return load_splits(folder)

        def compute() -> Splits:
            loader = self.registry.get("dataset", spec.name)
            options = dict(spec.options)
            if spec.path:  # resolved: what was fingerprinted, whatever the working directory
                options["path"] = str(Path(spec.path).expanduser().resolve())
            if "workdir" in inspect.signature(loader).parameters:  # decodes into maps here, resumable
                options.setdefault("workdir", str(folder / "decode"))
            console.log(f"loading dataset {spec.name}")
            splits = loader(**options)
            content = save_splits(folder, splits, by_content)  # the digest array_digest gives the arrays
            remove_tree(folder / "decode")
            self.cache.mark_done("dataset", key, {"spec": spec, "train": len(splits.train), "val": len(splits.val),
                                                  "inputs": self._dataset_files,
                                                  "content": content})
            if by_content:
                self._data_key = stable_hash("data", content)
            return load_splits(folder)  # the maps of the stored files, whatever the loader returned

        splits = self.cache.run("dataset", key, load, compute)
        if not by_content:
            self._data_key = stable_hash("dataset", spec)  # the key before datasets were keyed by content
        self._splits = splits
        return splits

    # -- attack -------------------------------------------------------------------------------
    def attack_inputs(self, name: str) -> tuple[dict[str, str], ...]:
        """The content digests of the files an attack's options name (trigger images); () when none."""
        if name not in self._attack_inputs:
            config = self.attack(name).config
            found = file_inputs(config)
            # multi_target's default trigger became 'glyph' (issue #14): keyed when left to a default other
            # than 'random', so the stages keyed by the raw options change; named triggers keep their keys
            trigger = getattr(config, "trigger", "random")
            default = {"trigger": trigger} if trigger != "random" and "trigger" not in self.config.attack.get(
                name, {}) else {}
            self._attack_inputs[name] = tuple(part for part in (found, default) if part)
        return self._attack_inputs[name]

    def attack(self, name: str) -> Attack:
        cls = self.registry.get("attack", name)
        return cls(config_from_options(cls.Config, self.config.attack.get(name, {}), f"attack {name}"))

    def poisoning(self, cell: Cell) -> tuple[Poisoning, str]:
        """The poisoned training set of a cell (cached)."""
        splits = self.splits()
        for t in cell.targets:
            splits.check_target(t)
        attack = self.attack(cell.attack)
        key = self.poison_key(cell)
        folder = self.cache.dir("poison", key)

        def load() -> Poisoning:
            if (folder / "poison.npz").is_file():  # cached before the memory-mapped store (issue #15)
                with np.load(folder / "poison.npz") as d:
                    triggers = {int(k.split("_")[1]): d[k] for k in d.files if k.startswith("trigger_")}
                    train = ImageDataset(d["images"], splits.train.labels, splits.classes)
                    return Poisoning(train, d["mask"], d["poison_target"], d["boxes"], triggers)
            # the clean training map with the stored poisoned rows over it: no copy of the training set
            train = ImageDataset(open_rows(folder, splits.train.images), splits.train.labels, splits.classes)
            with np.load(folder / "poison-meta.npz") as d:
                triggers = {int(k.split("_")[1]): d[k] for k in d.files if k.startswith("trigger_")}
                return Poisoning(train, d["mask"], d["poison_target"], d["boxes"], triggers)

        def compute() -> Poisoning:
            p = attack.poison(splits.train, list(cell.targets), cell.rate, cell.seed)
            changed = save_rows(folder, splits.train.images, p.train.images)
            _save_arrays(folder / "poison-meta.npz", mask=p.poison_mask, poison_target=p.poison_target,
                         boxes=p.boxes, **{f"trigger_{t}": trig for t, trig in p.triggers.items()})
            self.cache.mark_done("poison", key, {"cell": cell.label, "poisons": int(p.poison_mask.sum()),
                                                 "changed_rows": len(changed)})
            del p  # the attack's full copy: what is returned maps the clean set
            return load()

        return self.cache.run("poison", key, load, compute), key

    def poison_key(self, cell: Cell) -> str:
        attack = self.attack(cell.attack)
        return stable_hash("poison", self.dataset_key, cell.attack, attack.config, cell.targets, cell.rate, cell.seed,
                           *self.attack_inputs(cell.attack))

    def patched_val(self, attack_name: str, target: int, seed: int) -> PatchedSet:
        """The validation set with ``target``'s trigger on every image (cached)."""
        attack = self.attack(attack_name)
        key = stable_hash("patched", self.dataset_key, attack_name, attack.config, target, seed,
                          *self.attack_inputs(attack_name))
        folder = self.cache.dir("patched", key)

        def load() -> PatchedSet:
            if (folder / "patched.npz").is_file():  # cached before the memory-mapped store (issue #15)
                with np.load(folder / "patched.npz") as d:
                    return PatchedSet(d["images"], d["labels"], d["boxes"])
            with np.load(folder / "patched-meta.npz") as d:
                return PatchedSet(open_array(folder / "images.npy"), d["labels"], d["boxes"])

        def compute() -> PatchedSet:
            patched = attack.patch_val(self.splits().val, target, seed)
            save_array(folder / "images.npy", patched.images)
            _save_arrays(folder / "patched-meta.npz", labels=patched.labels, boxes=patched.boxes)
            self.cache.mark_done("patched", key, {"attack": attack_name, "target": target})
            return load()

        return self.cache.run("patched", key, load, compute)

    # -- pretraining --------------------------------------------------------------------------
    def build_method(self) -> SSLMethod:
        spec = self.config.ssl
        size = self.splits().train.image_size
        factories = self.registry.items["backbone"]
        if spec.backbone in factories:
            backbone = factories[spec.backbone].obj(size, **spec.backbone_options)
        else:
            backbone = timm_backbone(spec.backbone, size, **spec.backbone_options)
        cls = self.registry.get("ssl", spec.method)
        return cls(backbone, config_from_options(cls.Config, spec.method_options, f"ssl method {spec.method}"))

    def encoder(self, images: np.ndarray, data_key: str, seed: int, label: str,
                training: Defense | None = None) -> Encoder:
        """Pretrain (or resume, or load) the SSL encoder on ``images``.

        ``training`` is a training-time defense that wraps the SSL method (i-CutMix).
        """
        start = self.config.ssl.checkpoint
        key = self.pretrain_key(data_key, seed, training)
        workdir = self.cache.dir("pretrain", key)
        torch.manual_seed(seed)
        method = self.build_method()
        if training is not None:
            method = training.wrap_method(method)
        if start:
            load_into(method.backbone, Path(start))

        def load() -> Encoder:
            load_into(method.backbone, workdir / "encoder.safetensors")
            for epoch in self.config.train.snapshots:  # a missing snapshot: the stage is moved aside and rerun
                if epoch < self.config.train.epochs and not snapshot_path(workdir, epoch).is_file():
                    raise FileNotFoundError(f"{snapshot_path(workdir, epoch).name} is missing")
            return Encoder(key, method.backbone)

        def compute() -> Encoder:
            if (workdir / "trainer_state.pt").is_file():
                console.log(f"{label}: resuming from the last checkpoint in {workdir}")
            pretrain(method, images, self.config.train, seed, workdir, self.device, label=label)
            if distributed.is_main():
                save_tensors(workdir / "encoder.safetensors", method.backbone.state_dict())
            self.cache.mark_done("pretrain", key, {"label": label, "images": len(images)})
            method.backbone.cpu()
            return Encoder(key, method.backbone)

        return self.cache.run("pretrain", key, load, compute)

    def snapshots(self, encoder: Encoder) -> list[tuple[int, Encoder]]:
        """(epoch, encoder) at each ``train.snapshots`` epoch and the last one of a pretrained ``encoder``;
        the last is ``encoder`` itself, so its probe is the one of the results row."""
        train, found = self.config.train, []
        for epoch in sorted({*train.snapshots, train.epochs}):
            if epoch == train.epochs:
                found.append((epoch, encoder))
                continue
            backbone = copy.deepcopy(encoder.backbone)  # the same architecture, without touching the torch RNG
            load_into(backbone, snapshot_path(self.cache.dir("pretrain", encoder.key), epoch))
            found.append((epoch, Encoder(stable_hash("snapshot", encoder.key, epoch), backbone)))
        return found

    def pretrain_key(self, data_key: str, seed: int, training: Defense | None = None) -> str:
        """The cache key of an encoder: its data, recipe, seed, start checkpoint and training-time defense."""
        start = self.config.ssl.checkpoint
        if start and self._start_hash is None:  # read once: a large checkpoint keys every cell
            self._start_hash = file_digest(Path(start))
        start_hash = self._start_hash if start else None
        defended = () if training is None else (training.name, training.config)
        return stable_hash("pretrain", data_key, self.config.ssl, self.config.train, seed, start_hash, *defended)

    # -- evaluation ---------------------------------------------------------------------------
    def features(self, encoder: Encoder, images: np.ndarray, name: str, data_key: str) -> np.ndarray:
        key = stable_hash("features", encoder.key, name, data_key)
        path = self.cache.dir("features", key) / "features.npy"

        def compute() -> np.ndarray:
            feats = extract_features(encoder.backbone, images, device=self.device)
            _save_array(path, feats)
            self.cache.mark_done("features", key, {"name": name, "n": len(images)})
            return feats

        return self.cache.run("features", key, lambda: np.load(path), compute)

    def evaluate(self, encoder: Encoder, cell: Cell) -> list[dict[str, Any]]:
        """Linear/kNN probe on the clean labelled split; ACC/FP/ASR on clean and patched val per target."""
        key = stable_hash("probe", encoder.key, self.config.probe, cell.attack, self.config.attack.get(cell.attack),
                          cell.targets, cell.seed, *self.attack_inputs(cell.attack))
        path = self.cache.dir("probe", key) / "metrics.json"

        def compute() -> list[dict[str, Any]]:
            splits = self.splits()
            n_cls = splits.train.num_classes
            train_f = self.features(encoder, splits.train.images, "train", self.dataset_key)
            val_f = self.features(encoder, splits.val.images, "val", self.dataset_key)
            patched = {t: self.patched_val(cell.attack, t, cell.seed) for t in cell.targets}
            patched_f = {t: self.features(encoder, p.images, f"patched-{cell.attack}-{t}-{cell.seed}",
                                          stable_hash(self.dataset_key, self.config.attack.get(cell.attack),
                                                      *self.attack_inputs(cell.attack)))
                         for t, p in patched.items()}
            per_seed = []
            for probe_seed in self.config.probe.seeds:
                predict = fit_probe(train_f, splits.train.labels, n_cls, self.config.probe, probe_seed)
                clean_pred = predict(val_f)
                per_seed.append({t: (confusion_matrix(splits.val.labels, clean_pred, n_cls),
                                     confusion_matrix(patched[t].labels, predict(patched_f[t]), n_cls))
                                 for t in cell.targets})
            rows = []
            for t in cell.targets:
                stats = np.array([[accuracy(c), attack_success_rate(c, t), false_positives(c, t),
                                   accuracy(p), attack_success_rate(p, t), false_positives(p, t)]
                                  for c, p in (s[t] for s in per_seed)])
                mean = stats.mean(0)
                # where trigger t sends the non-target images, % per predicted class (issue #14)
                shares = np.mean([prediction_shares(s[t][1], t) for s in per_seed], axis=0)
                rows.append(dict(target=t, clean_acc=mean[0], clean_asr=mean[1], clean_fp=mean[2],
                                 patched_acc=mean[3], patched_asr=mean[4], patched_fp=mean[5],
                                 patched_confusion=[round(float(v), 2) for v in shares]))
            save_json(path, rows)
            self.cache.mark_done("probe", key, {"encoder": encoder.key})
            return rows

        def load() -> list[dict[str, Any]]:
            rows = json.loads(path.read_text())
            if any("patched_confusion" not in row for row in rows):  # probed before the column: probe again
                raise FileNotFoundError(f"{path} lacks patched_confusion")
            return rows

        return self.cache.run("probe", key, load, compute)

    # -- defenses -----------------------------------------------------------------------------
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

    def detect(self, defense: Defense, threat: Encoder, poisoning: Poisoning, poison_key: str,
               seed: int) -> Detection:
        """Run a filter defense (cached): per-image scores, the removal mask, located windows."""
        key = self.detect_key(defense, threat.key, poison_key, seed)
        workdir = self.cache.dir("detect", key)
        path = workdir / "detection.npz"

        def load() -> Detection:
            extras = json.loads((workdir / "extras.json").read_text()) if (workdir / "extras.json").is_file() else {}
            control_file = workdir / "control.json"
            control = json.loads(control_file.read_text())["control_flag_rate"] if control_file.is_file() else None
            with np.load(path) as d:
                return Detection(d["scores"], d["remove"], d["windows"] if "windows" in d.files else None,
                                 {**extras, "workdir": str(workdir), "control_flag_rate": _nan_if_none(control)})

        def compute() -> Detection:
            images = poisoning.train.images
            ctx = DefenseContext(images, threat.backbone, self.features(threat, images, "poisoned-train", poison_key),
                                 poisoning.train.num_classes, seed, self.device, workdir)
            detection = defense.detect(ctx)
            remove = np.asarray(detection.remove, dtype=bool)
            if remove.shape != (len(images),):
                raise BenchError(f"defense {defense.name} returned a removal mask of shape {remove.shape}, "
                                 f"expected ({len(images)},): fix the plugin")
            scores = np.asarray(detection.scores, dtype=np.float64)
            windows = None if detection.windows is None else np.asarray(detection.windows, dtype=np.int64)
            _save_arrays(path, scores=scores, remove=remove, **({} if windows is None else {"windows": windows}))
            save_json(workdir / "extras.json", detection.extras)
            # the pasting control, built here from the ground truth the defense never saw
            control = pasting_control(detection.flag, poisoning, seed)
            save_json(workdir / "control.json", {"control_flag_rate": None if np.isnan(control) else control})
            self.cache.mark_done("detect", key, {"defense": defense.name, "removed": int(remove.sum())})
            return Detection(scores, remove, windows, {**detection.extras, "workdir": str(workdir),
                                                       "control_flag_rate": control})

        return self.cache.run("detect", key, load, compute)

    def detect_key(self, defense: Defense, threat_key: str, poison_key: str, seed: int) -> str:
        # CONTROL_SIZE: the stage also scores the pasting control (older cached detections lack it)
        return stable_hash("detect", defense.name, defense.config, threat_key, poison_key, seed, CONTROL_SIZE)

    # -- model defenses -----------------------------------------------------------------------
    def model_context(self, defense: Defense, encoder: Encoder, seed: int, workdir: Path) -> DefenseContext:
        """A model defense sees the encoder and the defender's own data: the clean training images."""
        splits = self.splits()
        feats = self.features(encoder, splits.train.images, "train", self.dataset_key)
        return DefenseContext(splits.train.images, encoder.backbone, feats, splits.train.num_classes, seed,
                              self.device, workdir)

    def inspect(self, defense: Defense, encoder: Encoder, seed: int) -> tuple[Verdict, Path]:
        """Run a model defense's detector on one encoder (cached); returns the verdict and its folder."""
        key = self.inspect_key(defense, encoder.key, seed)
        workdir = self.cache.dir("inspect", key)
        path = workdir / "verdict.json"

        def compute() -> Verdict:
            verdict = defense.inspect(self.model_context(defense, encoder, seed, workdir))
            save_json(path, {"trojaned": bool(verdict.trojaned), "anomaly_index": float(verdict.anomaly_index),
                             "flagged": None if verdict.flagged is None else int(verdict.flagged),
                             "extras": verdict.extras})
            self.cache.mark_done("inspect", key, {"defense": defense.name, "encoder": encoder.key})
            return verdict

        return self.cache.run("inspect", key, lambda: Verdict(**json.loads(path.read_text())), compute), workdir

    def inspect_key(self, defense: Defense, encoder_key: str, seed: int) -> str:
        return stable_hash("inspect", defense.name, defense.inspect_options(), encoder_key, self.dataset_key, seed)

    @property
    def clean_data_key(self) -> str:
        """The data key of the clean training set (what the clean reference encoder trains on)."""
        return stable_hash("clean", self.dataset_key)

    def mitigate(self, defense: Defense, encoder: Encoder, verdict: Verdict, seed: int) -> Encoder:
        """The model defense's repaired encoder (cached), or ``encoder`` itself when it repairs nothing."""
        key = self.mitigate_key(defense, encoder.key, seed)
        workdir = self.cache.dir("mitigate", key)
        weights = workdir / "encoder.safetensors"

        def load() -> Encoder:
            if not weights.is_file():
                if self.cache.meta("mitigate", key).get("repaired"):
                    raise BenchError(f"the repaired encoder {weights} is missing")
                return encoder  # the defense repaired nothing
            backbone = self.build_method().backbone
            load_into(backbone, weights)
            return Encoder(key, backbone)

        def compute() -> Encoder:
            repaired = defense.mitigate(self.model_context(defense, encoder, seed, workdir), verdict)
            if repaired is not None:
                save_tensors(weights, repaired.state_dict())
            self.cache.mark_done("mitigate", key, {"defense": defense.name, "repaired": repaired is not None})
            return load()

        return self.cache.run("mitigate", key, load, compute)

    def mitigate_key(self, defense: Defense, encoder_key: str, seed: int) -> str:
        return stable_hash("mitigate", defense.name, defense.config, encoder_key, self.dataset_key, seed)
