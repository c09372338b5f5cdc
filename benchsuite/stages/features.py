"""The features stage: an encoder's pooled features of a set of images."""

from __future__ import annotations

import numpy as np

from benchsuite.core.cache import code_versions, stable_hash
from benchsuite.eval.features import extract_features
from benchsuite.ssl.augment import AugmentConfig
from benchsuite.stages.base import Encoder, StageBase, save_one_array


class FeaturesStage(StageBase):
    """Key: the encoder's key, what the images are (a name) and the key of the data they came from."""

    FEATURES_VERSION = 0

    def features_key(self, encoder_key: str, name: str, data_key: str) -> str:
        return stable_hash("features", encoder_key, name, data_key, *code_versions(stage=self.FEATURES_VERSION))

    def features(self, encoder: Encoder, images: np.ndarray, name: str, data_key: str) -> np.ndarray:
        key = self.features_key(encoder.key, name, data_key)
        path = self.cache.dir("features", key) / "features.npy"

        def compute() -> np.ndarray:
            mean, std = self.input_norm
            feats = extract_features(encoder.backbone, images, device=self.device,
                                     augment_cfg=AugmentConfig(mean=mean, std=std))
            save_one_array(path, feats)
            self.cache.mark_done("features", key, {"name": name, "n": len(images)})
            return feats

        return self.cache.run("features", key, lambda: np.load(path), compute)
