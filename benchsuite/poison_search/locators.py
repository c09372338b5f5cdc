"""The part of the search that varies between defenses: where in an image is the candidate trigger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from benchsuite.core.clustering import Clusters
from benchsuite.poison_search.encoding import EncoderRunner


@dataclass
class Located:
    """Candidate windows and the heat maps they were chosen from."""

    windows: np.ndarray  # (n, 4) int64 x, y, w, h
    maps: np.ndarray  # (n, H, W) float32, higher = more trigger-like


class Locator(Protocol):
    """Finds one ``window`` x ``window`` candidate trigger per image.

    ``assignments`` are the images' clusters (the targets of Grad-CAM; unused by masking).
    """

    name: str

    def locate(self, runner: EncoderRunner, images: np.ndarray, clusters: Clusters,
               assignments: np.ndarray, window: int) -> Located: ...
