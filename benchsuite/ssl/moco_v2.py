"""MoCo-v2 (Chen et al., 2020): momentum key encoder and a queue of negatives."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchsuite.hookspecs import hookimpl
from benchsuite.ssl.base import SSLMethod, cosine_to_one, ema_update, mlp


@dataclass(frozen=True)
class MoCoV2Config:
    proj_hidden: int = 512  # paper: 512 for ResNet-18 (--mlp)
    proj_dim: int = 128  # paper: 128
    queue_size: int = 65536  # paper: 65536; presets shrink it for small data
    momentum: float = 0.999  # paper: 0.999; raised to 1 by a cosine schedule when momentum_cos
    momentum_cos: bool = False
    temperature: float = 0.2  # paper: 0.2
    symmetric: bool = True  # both views act as queries (the paper uses one direction)


class MoCoV2(SSLMethod):
    name = "moco_v2"
    Config = MoCoV2Config
    description = "MoCo-v2: momentum encoder, queue of negatives, InfoNCE"

    def __init__(self, backbone, config=None) -> None:
        super().__init__(backbone, config)
        cfg = self.config
        self.projector = mlp([self.feature_dim, cfg.proj_hidden, cfg.proj_dim])
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _keys(self, view: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(self.key_projector(self.key_backbone(view)), dim=1)

    def _info_nce(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.clone().T
        logits = torch.cat([pos, neg], 1) / self.config.temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        n, size = len(keys), self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.projector(self.backbone(torch.cat([view1, view2]))), dim=1)
        q1, q2 = q.chunk(2)
        k2 = self._keys(view2)
        loss = self._info_nce(q1, k2)
        if self.config.symmetric:
            k1 = self._keys(view1)
            loss = (loss + self._info_nce(q2, k1)) / 2
            self._enqueue(k1)
        self._enqueue(k2)
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = cosine_to_one(self.config.momentum, progress) if self.config.momentum_cos else self.config.momentum
        ema_update(self.backbone, self.key_backbone, m)
        ema_update(self.projector, self.key_projector, m)


@hookimpl
def benchsuite_ssl_methods() -> list[type[SSLMethod]]:
    return [MoCoV2]
