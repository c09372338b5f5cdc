"""The pretrain stage: an SSL encoder trained (or resumed, or loaded) on a set of images."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from benchsuite.api import Defense, SSLMethod, config_from_options
from benchsuite.core import distributed
from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.core.checkpoint import load_into, save_tensors
from benchsuite.core.console import console
from benchsuite.nets.backbones import timm_backbone
from benchsuite.ssl.trainer import pretrain, snapshot_path
from benchsuite.stages.base import Encoder, StageBase, file_digest


class PretrainStage(StageBase):
    """Key: the data key, the SSL recipe and its code version, the seed, the start checkpoint's bytes and
    the training-time defense (name, config, code version) that wraps the method."""

    PRETRAIN_VERSION = 0

    def build_method(self) -> SSLMethod:
        spec = self.config.ssl
        size = self.splits().train.image_size
        factories = self.registry.items["backbone"]
        if spec.backbone in factories:
            backbone = factories[spec.backbone].obj(size, **spec.backbone_options)
        else:
            backbone = timm_backbone(spec.backbone, size, **spec.backbone_options)
        cls = self.registry.get("ssl", spec.method)
        method = cls(backbone, config_from_options(cls.Config, spec.method_options, f"ssl method {spec.method}"))
        # how the trainer normalises the views: what a wrapper that writes pixels into them (i-CutMix) needs
        method.input_mean, method.input_std = self.input_norm
        return method

    def pretrain_key(self, data_key: str, seed: int, training: Defense | None = None) -> str:
        """The cache key of an encoder: its data, recipe, seed, start checkpoint and training-time defense."""
        start = self.config.ssl.checkpoint
        if start and self._start_hash is None:  # read once: a large checkpoint keys every cell
            self._start_hash = file_digest(Path(start))
        start_hash = self._start_hash if start else None
        defended = () if training is None else (training.name, training.config)
        ssl_version = getattr(self.registry.get("ssl", self.config.ssl.method), "version", 0)
        versions = code_versions(stage=self.PRETRAIN_VERSION, ssl=ssl_version,
                                 training=0 if training is None else training.version)
        return stable_hash("pretrain", data_key, self.config.ssl, self.config.train, seed, start_hash, *defended,
                           *versions)

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

    def clean_encoder(self, seed: int) -> Encoder:
        """The recipe trained on the clean training set (shared by every cell of a seed)."""
        return self.encoder(self.splits().train.images, self.clean_data_key, seed, label=f"pretrain clean s={seed}")

    def clean_encoder_key(self, seed: int) -> str:
        return self.pretrain_key(self.clean_data_key, seed)

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
