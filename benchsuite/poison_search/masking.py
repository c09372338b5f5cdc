"""PoisonCAM's locator: Cluster Activation Masking (PoisonCAM §4.2).

For each image, B full-coverage w x w masks at uniformly random top-left corners (every valid
position equally likely; the paper leaves the distribution open). A masked pixel is set to zero
in raw RGB [0, 1] space, i.e. black, before the encoder's normalisation (the paper says "pixel
value zero" without naming the space; black is what a real occluder looks like, while zero after
normalisation would be the dataset mean colour). Each masked copy is assigned to its nearest
centre: eta* is the most frequent cluster, distances are max-min scaled over the B copies, the
outlier score is the scaled distance (or 1 where the cluster changed), and the attention map is the
score-weighted average of the masks (pixels no mask covers get 0).
"""

from __future__ import annotations

import numpy as np
import torch

from benchsuite.core.clustering import Clusters
from benchsuite.core.errors import BenchError
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.locators import Located
from benchsuite.poison_search.windows import best_windows


def window_masks(corners: torch.Tensor, side: int, height: int, width: int) -> torch.Tensor:
    """(..., H, W) bool masks, True inside the ``side`` x ``side`` window at each (x, y) corner (..., 2)."""
    rows = torch.arange(height, device=corners.device)
    cols = torch.arange(width, device=corners.device)
    x, y = corners[..., 0:1], corners[..., 1:2]
    in_rows = (rows >= y) & (rows < y + side)  # (..., H)
    in_cols = (cols >= x) & (cols < x + side)  # (..., W)
    return in_rows[..., :, None] & in_cols[..., None, :]


def outlier_scores(clusters: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Eq. 2 for (n, B) cluster labels and centre distances of the masked copies -> (n, B) scores in [0, 1]."""
    scores = np.empty(distances.shape, dtype=np.float32)
    for i, (eta, dist) in enumerate(zip(clusters, distances, strict=True)):
        values, counts = np.unique(eta, return_counts=True)
        majority = values[np.argmax(counts)]  # eta*; ties -> the smallest cluster id
        low, high = float(dist.min()), float(dist.max())
        scaled = (dist - low) / (high - low) if high > low else np.zeros_like(dist)
        scores[i] = np.where(eta == majority, scaled, 1.0)
    return scores


def attention_maps(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Eq. 3: sum_j a_j m_j / sum_j m_j for (n, B, H, W) masks and (n, B) scores; uncovered pixels 0."""
    m = masks.float()
    weighted = torch.einsum("nb,nbhw->nhw", scores.float(), m)
    count = m.sum(1)
    return torch.where(count > 0, weighted / count.clamp(min=1), torch.zeros_like(weighted))


class MaskingLocator:
    """Candidate = the w x w window with the largest sum of the cluster-activation attention map."""

    name = "masking"

    def __init__(self, num_masks: int, seed: int) -> None:
        if num_masks < 2:
            raise BenchError(f"num_masks={num_masks}: cluster activation masking needs at least 2 masks")
        self.num_masks = num_masks
        self.generator = torch.Generator().manual_seed(seed)

    def corners(self, n: int, side: int, height: int, width: int) -> torch.Tensor:
        """(n, B, 2) top-left corners (x, y), uniform over all valid window positions."""
        x = torch.randint(0, width - side + 1, (n, self.num_masks), generator=self.generator)
        y = torch.randint(0, height - side + 1, (n, self.num_masks), generator=self.generator)
        return torch.stack([x, y], -1)

    def locate(self, runner: EncoderRunner, images: np.ndarray, clusters: Clusters,
               assignments: np.ndarray, window: int) -> Located:
        n, height, width = images.shape[:3]
        if window > min(height, width):
            raise BenchError(f"window of {window}px is larger than the {height}x{width} images: lower the window")
        corners = self.corners(n, window, height, width).to(runner.device)
        windows, maps = [], []
        for sl in runner.chunks(n, per_item=self.num_masks):
            x01 = runner.unit(images[sl])
            masks = window_masks(corners[sl], window, height, width)  # (c, B, H, W)
            masked = (x01[:, None] * ~masks[:, :, None]).flatten(0, 1)  # black where masked
            eta, dist = clusters.assign(runner.embed(masked))
            shape = masks.shape[:2]
            scores = outlier_scores(eta.reshape(shape), dist.reshape(shape))
            att = attention_maps(masks, torch.from_numpy(scores).to(runner.device))
            windows.append(best_windows(att, window))
            maps.append(att.cpu().numpy())
        return Located(np.concatenate(windows) if windows else np.zeros((0, 4), np.int64),
                       np.concatenate(maps) if maps else np.zeros((0, height, width), np.float32))
