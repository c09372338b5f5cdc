"""The dataset stage: the splits, generated or loaded once and cached as arrays."""

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
            self._dataset_stage_key = stable_hash("dataset", self.config.dataset, *inputs,
                                                  *code_versions(stage=self.DATASET_VERSION))
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

    @property
    def clean_data_key(self) -> str:
        """The data key of the clean training set (what the clean reference encoder trains on)."""
        return stable_hash("clean", self.dataset_key)

    def _generated_key(self) -> str:
        return stable_hash("dataset", self.config.dataset, *code_versions(stage=self.DATASET_VERSION))

    def splits(self) -> Splits:
        """The dataset, generated or loaded once and cached as arrays."""
        if self._splits is not None:
            return self._splits
        key, spec = self.dataset_stage_key, self.config.dataset
        by_content = key != self._generated_key()
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
            self._data_key = self._generated_key()  # a generated dataset: its spec
        self._splits = splits
        return splits
