"""The dataset stage: the splits of a dataset spec, generated or loaded once and cached as arrays.

A run reads up to two: the pre-training dataset (``[dataset]``) and, when ``[downstream]`` is set, the
downstream dataset the probe is trained and scored on (BadEncoder's setting: a CIFAR-10 encoder probed on
GTSRB); without it the downstream dataset is the pre-training one.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchsuite.api import ImageDataset, Splits
from benchsuite.core.cache import code_versions, file_inputs, path_fingerprint, stable_hash
from benchsuite.core.console import console
from benchsuite.data.store import load_splits, remove_tree, save_splits
from benchsuite.stages.base import StageBase


class DatasetStage(StageBase):
    """Key: the dataset spec plus a fingerprint of the files it reads; downstream key: the loaded content."""

    DATASET_VERSION = 0  # bump when loading the same files gives different arrays

    def _inputs(self, spec: Any) -> dict[str, Any]:
        """The files a dataset is read from: the resolved path and a fingerprint of what is there."""
        inputs = {}
        found = path_fingerprint(spec.path) if spec.path else None
        if found:
            inputs["path"] = found
        if option_files := file_inputs(spec.options):  # e.g. imagefolder's class_list
            inputs["options"] = option_files
        return inputs

    def _generated_key(self, spec: Any) -> str:
        return stable_hash("dataset", spec, *code_versions(stage=self.DATASET_VERSION))

    def stage_key_of(self, spec: Any) -> str:
        """The dataset stage's key: the spec, plus the files it reads (by content) when it reads any."""
        memo = stable_hash(spec)
        if memo not in self._dataset_stage_keys:
            files = self._inputs(spec)
            self._dataset_files[memo] = files
            self._dataset_stage_keys[memo] = stable_hash("dataset", spec, *([files] if files else []),
                                                         *code_versions(stage=self.DATASET_VERSION))
        return self._dataset_stage_keys[memo]

    @property
    def dataset_stage_key(self) -> str:
        return self.stage_key_of(self.config.dataset)

    @property
    def dataset_key(self) -> str:
        """The data key of every stage downstream of the pre-training dataset.

        A dataset read from files is keyed by the content of the arrays loaded from them, so a touched
        or moved but unchanged folder retrains nothing; a generated one by its spec.
        """
        return self._dataset(self.config.dataset)[1]

    @property
    def clean_data_key(self) -> str:
        """The data key of the clean training set (what the clean reference encoder trains on)."""
        return stable_hash("clean", self.dataset_key)

    def splits(self) -> Splits:
        """The pre-training dataset, generated or loaded once and cached as arrays."""
        return self._dataset(self.config.dataset)[0]

    def downstream_splits(self) -> Splits:
        """The dataset the probe trains and is scored on (and the patched sets are made of)."""
        spec = self.config.downstream
        return self._dataset(spec)[0] if spec is not None else self.splits()

    @property
    def downstream_key(self) -> str:
        spec = self.config.downstream
        return self._dataset(spec)[1] if spec is not None else self.dataset_key

    def _dataset(self, spec: Any) -> tuple[Splits, str]:
        memo = stable_hash(spec)
        if memo in self._datasets:
            return self._datasets[memo]
        key = self.stage_key_of(spec)
        by_content = key != self._generated_key(spec)
        folder = self.cache.dir("dataset", key)
        data_key: list[str] = []

        def load() -> Splits:
            if by_content:
                data_key[:] = [stable_hash("data", self.cache.meta("dataset", key)["content"])]
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
                                                  "inputs": self._dataset_files[memo], "content": content})
            if by_content:
                data_key[:] = [stable_hash("data", content)]
            return load_splits(folder)  # the maps of the stored files, whatever the loader returned

        splits = self.cache.run("dataset", key, load, compute)
        # a generated dataset: its spec (the key before datasets were keyed by content)
        self._datasets[memo] = (splits, data_key[0] if by_content else self._generated_key(spec))
        return self._datasets[memo]
