"""Distances between two sets of embeddings, as the model attacks use them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 50,
                       generator: torch.Generator | None = None, p: int = 2) -> torch.Tensor:
    """Sliced p-Wasserstein distance between the empirical distributions of the rows of ``a`` and ``b``
    (uniform weights, equal counts): ``(mean over random unit directions of W_p^p of the projections)^(1/p)``.
    POT's ``sliced_wasserstein_distance`` with its defaults (50 projections, p = 2), which DRUPE calls."""
    if len(a) != len(b):
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
    directions = torch.randn(a.shape[1], projections, generator=generator).to(a.device, a.dtype)
    directions = F.normalize(directions, dim=0)
    pa, _ = torch.sort(a @ directions, dim=0)
    pb, _ = torch.sort(b @ directions, dim=0)
    return ((pa - pb).abs().pow(p).mean(0)).mean().pow(1.0 / p)


def mean_pairwise_cosine(features: torch.Tensor) -> torch.Tensor:
    """The mean cosine between distinct rows (the diagonal left out): how collapsed a set of embeddings is."""
    f = F.normalize(features, dim=1)
    n = len(f)
    if n < 2:
        return f.new_zeros(())
    sim = f @ f.T
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
