"""MoCo-v3 (Chen, Xie & He, 2021): momentum encoder, predictor, symmetric in-batch InfoNCE.

Defaults are the ViT-B/16 recipe PatchSearch trains (spec 8.1); it also runs on the ResNets.
For a ViT the patch embedding can be frozen at its random init ("stop-grad conv1") and the
position embedding fixed to 2-D sin-cos, as in the MoCo-v3 code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api.hookspecs import hookimpl
from benchsuite.core import distributed
from benchsuite.core.cache import added_field
from benchsuite.core.errors import BenchError
from benchsuite.ssl.base import (
    SSLMethod,
    cosine_to_one,
    ema_update,
    mixed_cross_entropy,
    mlp,
    predictor_groups,
    require,
    split_halves,
)


@dataclass(frozen=True)
class MoCoV3Config:
    proj_layers: int = 3  # MoCo-v3: 3 for ViT (768 -> 4096 -> 4096 -> 256), 2 for ResNet
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096  # predictor 256 -> 4096 -> 256
    momentum: float = 0.99  # raised to 1 by a cosine schedule (--moco-m-cos)
    temperature: float = 0.2
    stop_grad_patch_embed: bool = True  # ViT only: keep the random patch projection (--stop-grad-conv1)
    sincos_pos_embed: bool = True  # ViT only: fixed 2-D sin-cos position embedding
    pred_lr_scale: float = added_field(1.0)  # the predictor's lr / the scheduled lr (paper: 1)

    def __post_init__(self) -> None:
        require("moco_v3", self.proj_layers >= 2, "proj_layers", self.proj_layers, "must be >= 2")
        for key in ("proj_hidden", "proj_dim", "pred_hidden"):
            require("moco_v3", getattr(self, key) > 0, key, getattr(self, key), "must be > 0")
        require("moco_v3", self.temperature > 0, "temperature", self.temperature, "must be > 0")
        require("moco_v3", 0 <= self.momentum <= 1, "momentum", self.momentum, "must be in [0, 1]")
        require("moco_v3", self.pred_lr_scale > 0, "pred_lr_scale", self.pred_lr_scale, "must be > 0")


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(height * width, dim) fixed position embedding: sin and cos of x, then of y, at dim/4 frequencies."""
    if dim % 4:
        raise BenchError(f"a 2-D sin-cos position embedding needs an embedding width divisible by 4, got {dim}: "
                         "set ssl.method_options.sincos_pos_embed=false or change the backbone width")
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    freqs = temperature ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ax, ay = xs.reshape(-1, 1) * freqs, ys.reshape(-1, 1) * freqs
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1).float()


def prepare_vit(backbone: nn.Module, stop_grad_patch_embed: bool, sincos_pos_embed: bool) -> None:
    """MoCo-v3's ViT changes on a timm VisionTransformer; nothing for backbones without patches."""
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is None:
        return
    if stop_grad_patch_embed:
        patch_embed.requires_grad_(False)
    pos = getattr(backbone, "pos_embed", None)
    if sincos_pos_embed and isinstance(pos, nn.Parameter):
        h, w = patch_embed.grid_size
        prefix = pos.shape[1] - h * w  # class / register tokens get zeros
        with torch.no_grad():
            pos.zero_()
            pos[0, prefix:] = sincos_2d(h, w, pos.shape[2]).to(pos.dtype)
        pos.requires_grad_(False)


class MoCoV3(SSLMethod):
    name = "moco_v3"
    Config = MoCoV3Config
    description = "MoCo-v3: momentum encoder + predictor, symmetric InfoNCE over the global batch (ViT or ResNet)"

    def __init__(self, backbone, config=None) -> None:
        super().__init__(backbone, config)
        cfg = self.config
        prepare_vit(self.backbone, cfg.stop_grad_patch_embed, cfg.sincos_pos_embed)
        hidden = [cfg.proj_hidden] * (cfg.proj_layers - 1)
        self.projector = mlp([self.feature_dim, *hidden, cfg.proj_dim], last_bn=True)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim])
        self.momentum_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def _queries(self, views: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(views)))

    def _keys(self, views: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.momentum_projector(self.momentum_backbone(views))

    def _contrast(self, q: torch.Tensor, k: torch.Tensor, perm: torch.Tensor | None = None,
                  lam: torch.Tensor | None = None) -> torch.Tensor:
        """InfoNCE of this rank's queries against every rank's keys, x 2T as in MoCo-v3."""
        t = self.config.temperature
        keys = distributed.gather(F.normalize(k, dim=1))
        logits = F.normalize(q, dim=1) @ keys.T / t
        offset = distributed.rank() * len(q)
        mine = torch.arange(len(q), device=q.device) + offset
        loss = F.cross_entropy(logits, mine) if lam is None else mixed_cross_entropy(logits, mine, perm + offset, lam)
        return loss * 2 * t

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        q1, q2 = self._queries(torch.cat([view1, view2])).chunk(2)
        k1, k2 = self._keys(torch.cat([view1, view2])).chunk(2)
        return self._contrast(q1, k2) + self._contrast(q2, k1)

    def mixed_loss(self, mixed_view, other_view, perm, lam) -> torch.Tensor:
        """Queries from the mixed views, keys from the unmixed other views (PatchSearch's i-CutMix, spec 6.1)."""
        q = self._queries(mixed_view)
        k = self._keys(other_view)
        return sum(self._contrast(q[rows], k[rows], p, w) for rows, p, w in split_halves(perm, lam))

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        return predictor_groups(self, self.predictor, self.config.pred_lr_scale)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = cosine_to_one(self.config.momentum, progress)
        ema_update(self.backbone, self.momentum_backbone, m)
        ema_update(self.projector, self.momentum_projector, m)


@hookimpl
def benchsuite_ssl_methods() -> list[type[SSLMethod]]:
    return [MoCoV3]
