"""The SSL method interface: one class per method (solo-learn style)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from benchsuite.backbones import feature_dim


def mlp(dims: list[int], last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU layers between ``dims``; the last layer is linear (optionally BN)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=last and not last_bn))
        if not last:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * online for parameters; buffers (BN stats) copied."""
    for p_o, p_t in zip(online.parameters(), target.parameters()):
        p_t.mul_(momentum).add_(p_o.detach(), alpha=1 - momentum)
    for b_o, b_t in zip(online.buffers(), target.buffers()):
        b_t.copy_(b_o)


def cosine_to_one(start: float, progress: float) -> float:
    """A momentum raised from ``start`` to 1 by a half-cosine over training (BYOL, MoCo-v3)."""
    return 1 - (1 - start) * (math.cos(math.pi * progress) + 1) / 2


class SSLMethod(nn.Module):
    """A self-supervised method around a backbone.

    Subclasses set ``name`` and ``Config`` and implement :meth:`loss` on two augmented views.
    ``backbone`` is the encoder the suite evaluates and defends; methods with a momentum or
    target network update it in :meth:`after_step`. Training-time defenses (i-CutMix) get a
    mixed view and mixing weights through :meth:`mixed_loss` where a method supports it.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""

    def __init__(self, backbone: nn.Module, config: Any = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.backbone = backbone
        self.feature_dim = feature_dim(backbone)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step; ``progress`` in [0, 1] over the whole training."""
