"""SimCLR (Chen et al., 2020): NT-Xent over the 2B views of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchsuite.api.hookspecs import hookimpl
from benchsuite.core import distributed
from benchsuite.ssl.base import SSLMethod, mixed_cross_entropy, mlp, require, split_halves


@dataclass(frozen=True)
class SimCLRConfig:
    proj_hidden: int = 512
    proj_dim: int = 128
    temperature: float = 0.5  # CTRL's SimCLR recipe; 0.2 is common on ImageNet

    def __post_init__(self) -> None:
        for key in ("proj_hidden", "proj_dim"):
            require("simclr", getattr(self, key) > 0, key, getattr(self, key), "must be > 0")
        require("simclr", self.temperature > 0, "temperature", self.temperature, "must be > 0")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross entropy: each view's positive is the other view of its image.

    Under torchrun the rows are this rank's 2b views and the columns every rank's 2B views.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    b, offset = z1.shape[0], distributed.rank() * z1.shape[0]
    columns = torch.cat([distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)])
    big = columns.shape[0] // 2  # the global batch
    logits = torch.cat([z1, z2]) @ columns.T / temperature
    mine = torch.arange(b, device=z1.device) + offset
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, torch.cat([mine, mine + big])] = float("-inf")  # each view is not its own negative
    targets = torch.cat([mine + big, mine])
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

    def mixed_loss(self, mixed_view, other_view, perm, lam) -> torch.Tensor:
        """Mixed anchors against [unmixed other views; the other mixed anchors] (NT-Xent rows).

        The unmixed views go through the online network too, so a step costs 4B forward passes.
        """
        n = mixed_view.shape[0]
        z = F.normalize(self.projector(self.backbone(torch.cat([mixed_view, other_view]))), dim=1)
        zm, zo = z[:n], z[n:]
        loss = zm.new_zeros(())
        for rows, p, w in split_halves(perm, lam):
            anchors = zm[rows]
            b, offset = anchors.shape[0], distributed.rank() * anchors.shape[0]
            columns = torch.cat([distributed.gather_with_grad(zo[rows]), distributed.gather_with_grad(anchors)])
            big = columns.shape[0] // 2
            logits = anchors @ columns.T / self.config.temperature
            mine = torch.arange(b, device=z.device) + offset
            logits[torch.arange(b, device=z.device), mine + big] = float("-inf")
            loss = loss + mixed_cross_entropy(logits, mine, p + offset, w)
        return loss / 2


@hookimpl
def benchsuite_ssl_methods() -> list[type[SSLMethod]]:
    return [SimCLR]
