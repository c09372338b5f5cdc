"""k-means on L2-normalised features (faiss) and nearest-centre assignment through a faiss index.

The GPU path is taken when faiss was built with GPU support and CUDA is present; otherwise the
CPU implementation runs. For a given seed (and thread count) the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import torch

from benchsuite.core.errors import BenchError


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 and C-contiguous (what faiss wants)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


def faiss_gpu_available() -> bool:
    """True when faiss has GPU support and a CUDA device is visible."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0 and torch.cuda.is_available()


@dataclass
class Clusters:
    """k-means centres, the training assignments and a faiss index for assigning new features."""

    centres: np.ndarray  # (l, D) float32
    assignments: np.ndarray  # (N,) int64, nearest centre of each training image
    distances: np.ndarray  # (N,) float32, L2 distance to that centre
    index: Any = field(repr=False)  # faiss index over the centres (GPU or CPU)
    resources: Any = field(default=None, repr=False)  # keeps faiss GPU resources alive

    @property
    def num_clusters(self) -> int:
        return len(self.centres)

    def assign(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centre (int64) and L2 distance (float32) of L2-normalised ``features``."""
        sq, idx = self.index.search(l2_normalize(features), 1)
        return idx[:, 0].astype(np.int64), np.sqrt(np.maximum(sq[:, 0], 0)).astype(np.float32)

    def members(self, cluster: int) -> np.ndarray:
        """Indices of the training images assigned to ``cluster``."""
        return np.flatnonzero(self.assignments == cluster)


def centre_index(centres: np.ndarray, use_gpu: bool | None = None) -> tuple[Any, Any]:
    """An exact L2 index over ``centres`` (on GPU when available) and its GPU resources (or None)."""
    centres = np.ascontiguousarray(centres, dtype=np.float32)
    index = faiss.IndexFlatL2(centres.shape[1])
    index.add(centres)
    if use_gpu if use_gpu is not None else faiss_gpu_available():
        resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(resources, 0, index), resources
    return index, None


def kmeans(features: np.ndarray, num_clusters: int, seed: int, niter: int = 20,
           use_gpu: bool | None = None) -> Clusters:
    """faiss k-means of the L2-normalised ``features`` into ``num_clusters`` clusters."""
    n = len(features)
    if num_clusters < 1:
        raise BenchError(f"k-means needs at least one cluster, got num_clusters={num_clusters}")
    if num_clusters > n:
        raise BenchError(f"k-means with {num_clusters} clusters on {n} images: lower num_clusters to at most {n}")
    x = l2_normalize(features)
    gpu = faiss_gpu_available() if use_gpu is None else use_gpu
    # no subsampling (PatchSearch: max_points_per_centroid=1e7); small sets are fine, so no warning
    km = faiss.Kmeans(x.shape[1], num_clusters, niter=niter, seed=seed, verbose=False, gpu=gpu,
                      max_points_per_centroid=10**7, min_points_per_centroid=1)
    km.train(x)
    index, resources = centre_index(km.centroids, gpu)
    clusters = Clusters(np.asarray(km.centroids, dtype=np.float32), np.zeros(n, np.int64),
                        np.zeros(n, np.float32), index, resources)
    clusters.assignments, clusters.distances = clusters.assign(x)
    return clusters
