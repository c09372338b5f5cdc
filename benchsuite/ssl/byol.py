"""BYOL (Grill et al., 2020): online predictor regresses an EMA target network, no negatives."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.cache import added_field
from benchsuite.ssl.base import (
    SSLMethod,
    cosine_to_one,
    ema_update,
    mlp,
    predictor_groups,
    require,
    split_halves,
)


@dataclass(frozen=True)
class BYOLConfig:
    proj_hidden: int = 1024  # SSL-Backdoor R18 recipe: 512 -> 1024 -> 128
    proj_dim: int = 128
    pred_hidden: int = 1024  # predictor 128 -> 1024 -> 128
    tau: float = 0.99  # target EMA, raised to 1 by a cosine schedule (spec 8.3)
    pred_lr_scale: float = added_field(1.0)  # the predictor's lr / the scheduled lr (paper: 1)

    def __post_init__(self) -> None:
        for key in ("proj_hidden", "proj_dim", "pred_hidden"):
            require("byol", getattr(self, key) > 0, key, getattr(self, key), "must be > 0")
        require("byol", 0 <= self.tau <= 1, "tau", self.tau, "must be in [0, 1]")
        require("byol", self.pred_lr_scale > 0, "pred_lr_scale", self.pred_lr_scale, "must be > 0")


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, z), averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


class BYOL(SSLMethod):
    """No negatives, so nothing is gathered across ranks; only BatchNorm is synchronised."""

    name = "byol"
    Config = BYOLConfig
    description = "BYOL: predictor + EMA target network, normalised MSE, no negatives"

    def __init__(self, backbone, config=None) -> None:
        super().__init__(backbone, config)
        cfg = self.config
        self.projector = mlp([self.feature_dim, cfg.proj_hidden, cfg.proj_dim])
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim])
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        both = torch.cat([view1, view2])
        p1, p2 = self.predictor(self.projector(self.backbone(both))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(both)).chunk(2)
        return normalized_mse(p1, z2) + normalized_mse(p2, z1)

    def mixed_loss(self, mixed_view, other_view, perm, lam) -> torch.Tensor:
        """i-Mix's BYOL: the target of row i is lam cos(p_i, z_i) + (1 - lam) cos(p_i, z_perm(i)) (spec 6.2)."""
        p = F.normalize(self.predictor(self.projector(self.backbone(mixed_view))), dim=1)
        with torch.no_grad():
            z = F.normalize(self.target_projector(self.target_backbone(other_view)), dim=1)
        loss = p.new_zeros(())
        for rows, half_perm, w in split_halves(perm, lam):
            zh = z[rows]
            target = w * (p[rows] * zh).sum(1) + (1 - w) * (p[rows] * zh[half_perm]).sum(1)
            loss = loss + (2 - 2 * target).mean()
        return loss

    def param_groups(self) -> list[tuple[list[torch.nn.Parameter], float]]:
        return predictor_groups(self, self.predictor, self.config.pred_lr_scale)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        tau = cosine_to_one(self.config.tau, progress)
        ema_update(self.backbone, self.target_backbone, tau)
        ema_update(self.projector, self.target_projector, tau)


@hookimpl
def benchsuite_ssl_methods() -> list[type[SSLMethod]]:
    return [BYOL]
