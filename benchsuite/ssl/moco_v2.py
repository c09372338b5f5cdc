"""MoCo-v2 (Chen et al., 2020): momentum key encoder and a queue of negatives."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchsuite.api.hookspecs import hookimpl
from benchsuite.core import distributed
from benchsuite.core.errors import BenchError
from benchsuite.ssl.base import (
    SSLMethod,
    cosine_to_one,
    ema_update,
    mixed_cross_entropy,
    mlp,
    require,
    split_halves,
)


@dataclass(frozen=True)
class MoCoV2Config:
    proj_hidden: int = 512  # paper: 512 for ResNet-18 (--mlp)
    proj_dim: int = 128  # paper: 128
    queue_size: int = 65536  # paper: 65536; presets shrink it for small data
    momentum: float = 0.999  # paper: 0.999; raised to 1 by a cosine schedule when momentum_cos
    momentum_cos: bool = False
    temperature: float = 0.2  # paper: 0.2
    symmetric: bool = True  # both views act as queries (the paper uses one direction)
    # the other keys of the batch as extra negatives (i-Mix's "mocon"; i-CutMix always uses them)
    batch_negatives: bool = False

    def __post_init__(self) -> None:
        for key in ("proj_hidden", "proj_dim", "queue_size"):
            require("moco_v2", getattr(self, key) > 0, key, getattr(self, key), "must be > 0")
        require("moco_v2", self.temperature > 0, "temperature", self.temperature, "must be > 0")
        require("moco_v2", 0 <= self.momentum <= 1, "momentum", self.momentum, "must be in [0, 1]")


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

    def check_batch(self, batch: int) -> None:
        # a step enqueues the keys of every rank, of both views when symmetric
        per_step = batch * (2 if self.config.symmetric else 1)
        if per_step > self.config.queue_size:
            raise BenchError(f"ssl method moco_v2: queue_size {self.config.queue_size} is smaller than the "
                             f"{per_step} keys a step enqueues: raise ssl.method_options.queue_size")

    def _keys(self, view: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(self.key_projector(self.key_backbone(view)), dim=1)

    def _info_nce(self, q: torch.Tensor, k: torch.Tensor, perm: torch.Tensor | None = None,
                  lam: torch.Tensor | None = None) -> torch.Tensor:
        neg = q @ self.queue.clone().T
        if not (self.config.batch_negatives or lam is not None):
            logits = torch.cat([(q * k).sum(1, keepdim=True), neg], 1) / self.config.temperature
            return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        # the positive is this image's key among every rank's keys of the batch
        logits = torch.cat([q @ distributed.gather(k).T, neg], 1) / self.config.temperature
        mine = torch.arange(len(q), device=q.device) + distributed.rank() * len(q)
        if lam is None:
            return F.cross_entropy(logits, mine)
        return mixed_cross_entropy(logits, mine, perm + distributed.rank() * len(q), lam)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = distributed.gather(keys)  # every rank enqueues the same keys: the queues stay equal
        n, size = len(keys), self.queue.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
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

    def mixed_loss(self, mixed_view, other_view, perm, lam) -> torch.Tensor:
        """i-Mix's MoCo ("mocon"): logits against [the batch's keys; queue], mixed targets (spec 6.2)."""
        q = F.normalize(self.projector(self.backbone(mixed_view)), dim=1)
        (rows1, perm1, lam1), (rows2, perm2, lam2) = split_halves(perm, lam)  # queries from view1, view2
        k2 = self._keys(other_view[rows1])  # other_view = [view2; view1]
        loss = self._info_nce(q[rows1], k2, perm1, lam1)
        if self.config.symmetric:
            k1 = self._keys(other_view[rows2])
            loss = (loss + self._info_nce(q[rows2], k1, perm2, lam2)) / 2
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
