"""An example third-party defense for benchsuite, written as an outside researcher would.

``dense-cluster`` is a filter defense: HTBA poisons share one trigger, so a trigger-sensitive
encoder packs them unusually tightly. Every image is scored by its mean cosine similarity to
its k nearest neighbours in the threat encoder's feature space; the densest ``remove_fraction``
of the training set is removed and the suite retrains on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchsuite.api import Defense, Detection
from benchsuite.api.hookspecs import hookimpl


@dataclass(frozen=True)
class DenseClusterConfig:
    k: int = 10  # neighbours per image
    remove_fraction: float = 0.05  # share of the training set removed


class DenseCluster(Defense):
    name = "dense-cluster"
    kind = "filter"
    Config = DenseClusterConfig
    description = "example plugin: remove the images whose k nearest neighbours are closest"

    def detect(self, ctx) -> Detection:
        feats = F.normalize(torch.from_numpy(ctx.features).float(), dim=1)
        k = min(self.config.k, len(feats) - 1)
        density = torch.empty(len(feats))
        for start in range(0, len(feats), 1024):
            sims = feats[start:start + 1024] @ feats.T
            # the best match is the image itself: skip it
            density[start:start + 1024] = sims.topk(k + 1, dim=1).values[:, 1:].mean(1)
        scores = density.numpy()
        n_remove = int(round(self.config.remove_fraction * len(scores)))
        remove = np.zeros(len(scores), dtype=bool)
        remove[np.argsort(-scores, kind="stable")[:n_remove]] = True
        return Detection(scores=scores, remove=remove)


@hookimpl
def benchsuite_defenses():
    return [DenseCluster]
