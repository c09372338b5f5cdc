"""The SSL method interface: one class per method (solo-learn style)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.core.errors import BenchError
from benchsuite.nets.backbones import feature_dim


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


def require(method: str, ok: bool, key: str, value: Any, rule: str) -> None:
    """A method's config check: one line naming the option to fix."""
    if not ok:
        raise BenchError(f"ssl method {method}: {key} = {value!r} {rule}: fix ssl.method_options.{key}")


def mixed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, aux: torch.Tensor,
                        lam: torch.Tensor) -> torch.Tensor:
    """Mean over rows of lam * CE(logits, target) + (1 - lam) * CE(logits, aux) (i-Mix / i-CutMix)."""
    logp = F.log_softmax(logits.float(), dim=1)
    picked = lam * logp.gather(1, target[:, None])[:, 0] + (1 - lam) * logp.gather(1, aux[:, None])[:, 0]
    return -picked.mean()


class SSLMethod(nn.Module):
    """A self-supervised method around a backbone.

    Subclasses set ``name`` and ``Config`` and implement :meth:`loss` on two augmented views.
    ``backbone`` is the encoder the suite evaluates and defends; methods with a momentum or
    target network update it in :meth:`after_step`. Training-time defenses (i-CutMix) get a
    mixed view and mixing weights through :meth:`mixed_loss` where a method supports it.

    Under torchrun each rank calls :meth:`loss` on its share of the global batch; methods with
    negatives gather them with :mod:`benchsuite.core.distributed` (identity on one process).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    description: ClassVar[str] = ""
    version: ClassVar[int] = 0  # code version: enters the pretraining key; bump when the loss changes
    # how the trainer normalises the views (train.augment.mean / std), set when the suite builds the method
    input_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    input_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # set by the trainer every epoch: the (seed, epoch) generator, for randomness inside loss()
    generator: torch.Generator | None = None

    def __init__(self, backbone: nn.Module, config: Any = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.backbone = backbone
        self.feature_dim = feature_dim(backbone)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mixed_loss(self, mixed_view: torch.Tensor, other_view: torch.Tensor, perm: torch.Tensor,
                   lam: torch.Tensor) -> torch.Tensor:
        """The loss on mixed queries (i-CutMix), stacked as :meth:`loss` stacks its views.

        ``mixed_view`` = [mix(view1); mix(view2)] and ``other_view`` = [view2; view1] (2B rows each):
        row i of ``mixed_view`` is image i with a box pasted from row ``perm[i]`` (same half), its
        positive is row i of ``other_view`` with weight ``lam[i]`` and row ``perm[i]`` with weight
        ``1 - lam[i]``. With ``lam`` all ones it equals ``loss(view1, view2)``.
        """
        raise NotImplementedError(f"ssl method {self.name} has no mixed loss")

    @classmethod
    def supports_mixing(cls) -> bool:
        return cls.mixed_loss is not SSLMethod.mixed_loss

    def check_batch(self, batch: int) -> None:
        """Refuse a global (micro-)batch size the method cannot train with; called by the trainer."""

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step; ``progress`` in [0, 1] over the whole training."""

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """The trainable parameters as (parameters, lr scale) groups; the scale multiplies the scheduled lr."""
        return [([p for p in self.parameters() if p.requires_grad], 1.0)]


def predictor_groups(method: SSLMethod, predictor: nn.Module,
                     scale: float) -> list[tuple[list[nn.Parameter], float]]:
    """The groups of a method whose ``predictor`` trains at ``scale`` x the scheduled lr (SimSiam's
    and DirectPred's faster predictor), everything else at 1x; one group when ``scale`` is 1."""
    if scale == 1:
        return SSLMethod.param_groups(method)
    own = {id(p) for p in predictor.parameters()}
    rest = [p for p in method.parameters() if p.requires_grad and id(p) not in own]
    return [(rest, 1.0), ([p for p in predictor.parameters() if p.requires_grad], scale)]


def split_halves(perm: torch.Tensor, lam: torch.Tensor) -> list[tuple[slice, torch.Tensor, torch.Tensor]]:
    """For each half of a :meth:`SSLMethod.mixed_loss` batch: its rows, ``perm`` within it, ``lam``."""
    b = len(perm) // 2
    return [(slice(h * b, (h + 1) * b), perm[h * b:(h + 1) * b] - h * b, lam[h * b:(h + 1) * b]) for h in (0, 1)]
