"""What the suite needs of an SSL method (the implementations share :mod:`benchsuite.ssl.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn


@runtime_checkable
class SSLMethod(Protocol):
    """A self-supervised method around ``backbone``, the encoder the suite evaluates and defends."""

    name: ClassVar[str]
    Config: ClassVar[type]
    version: ClassVar[int]  # code version: enters the pretraining key
    backbone: nn.Module
    config: Any
    feature_dim: int

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor: ...

    def after_step(self, progress: float) -> None: ...

    def check_batch(self, batch: int) -> None: ...

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]: ...
