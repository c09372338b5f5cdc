"""SimCLR (Chen et al., 2020): NT-Xent over the 2B views of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchsuite.hookspecs import hookimpl
from benchsuite.ssl.base import SSLMethod, mlp


@dataclass(frozen=True)
class SimCLRConfig:
    proj_hidden: int = 512
    proj_dim: int = 128
    temperature: float = 0.5  # CTRL's SimCLR recipe; 0.2 is common on ImageNet


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross entropy: each view's positive is the other view of its image."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class SimCLR(SSLMethod):
    name = "simclr"
    Config = SimCLRConfig
    description = "SimCLR: NT-Xent contrastive loss, in-batch negatives"

    def __init__(self, backbone, config=None) -> None:
        super().__init__(backbone, config)
        self.projector = mlp([self.feature_dim, self.config.proj_hidden, self.config.proj_dim])

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        z = self.projector(self.backbone(torch.cat([view1, view2])))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.config.temperature)


@hookimpl
def benchsuite_ssl_methods() -> list[type[SSLMethod]]:
    return [SimCLR]
