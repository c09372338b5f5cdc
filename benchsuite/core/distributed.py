"""Multi-process pretraining under ``torchrun``: process group, collectives, rank-0-only stages.

``bench run`` under ``torchrun --nproc_per_node N`` runs the same program on every rank. Every
rank walks the grid; a stage other than pretraining is computed by rank 0 alone while the others
wait on a barrier and then read rank 0's cached result (:func:`run_stage`). Pretraining is
collective (rank 0 holds the stage's file lock while the ranks train, see ``StageCache.run``):
each rank trains on its share of every global batch, BatchNorm statistics are synchronised
over the global batch, the methods gather keys and negatives across ranks, and the gradients
are averaged with one all-reduce per optimiser step (:func:`average_gradients`; plain
all-reduce rather than DDP because the methods train through ``loss()``, not ``forward()``, and
gradient accumulation then needs nothing more). Only rank 0 writes files.

Outside ``torchrun`` (or inside :func:`alone`) every helper here acts as on one process.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

# the stages every rank computes together; all others are computed by rank 0 alone
COLLECTIVE_STAGES = frozenset({"pretrain"})
# ranks wait for rank 0's filter and model defenses (hours on ImageNet) on a gloo group with a long
# timeout: a barrier on the NCCL group would time out after NCCL's default 10 minutes
WAIT_TIMEOUT = timedelta(days=7)

_alone = 0
_control: Any = None


def _active() -> bool:
    return _alone == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); the device of this rank.

    CUDA ranks use NCCL and the GPU ``LOCAL_RANK``; CPU ranks use gloo. Ranks other than 0 log nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_teardown)
    if dist.get_rank() != 0:
        from benchsuite.core.console import console

        console.quiet = True
    return device


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _control_group() -> Any:
    """A gloo group for waits and small objects (created on first use, by every rank at once)."""
    global _control
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return _control


@contextmanager
def alone() -> Iterator[None]:
    """Rank 0 computing a stage by itself: the helpers act as on one process meanwhile."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def barrier() -> None:
    if _active():
        dist.barrier(group=_control_group())


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; small objects)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def mean(value: float) -> float:
    """The mean of a number over the ranks."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=_control_group())
    return float(t.item()) / world_size()


def run_stage(load: Callable[[], T], run_on_rank0: Callable[[], T]) -> T:
    """A cached stage that rank 0 computes alone (every stage but pretraining).

    Rank 0 runs it by itself (``run_on_rank0``: the cache's usual load-or-compute under the stage
    lock), the others wait on a barrier, then ``load`` what rank 0 cached. Pretraining, which every
    rank computes, goes through :meth:`benchsuite.core.cache.StageCache.run` too: rank 0 takes the stage
    lock, loads (or repairs) and broadcasts whether the ranks train.
    """
    if is_main():
        with alone():
            result = run_on_rank0()
        barrier()
        return result
    barrier()
    return load()


# -- tensors ------------------------------------------------------------------------------------
def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, without gradient."""
    if not _active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # every rank's loss depends on this rank's rows: sum their gradients, keep this rank's slice
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """:func:`gather` through which gradients flow back to the rank that owns each row.

    With the loss averaged over the ranks (:func:`average_gradients`) this gives the gradient of
    the loss over the global batch (SimCLR's in-batch negatives). Shards must have equal sizes.
    """
    return _GatherWithGrad.apply(x) if _active() else x


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients over the ranks with one all-reduce of a flat buffer."""
    if not _active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if not _active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


# -- BatchNorm over the global batch --------------------------------------------------------------
class GatheredBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover every rank's batch, for CPU ranks (gloo).

    torch's own ``nn.SyncBatchNorm`` refuses CPU input (torch 2.14: "SyncBatchNorm expected input
    tensor to be on GPU", and ``batch_norm_stats`` has no CPU kernel), so CUDA ranks use it and
    CPU ranks use this: two differentiable all-reduces (sum, then centred sum of squares) per layer.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not _active():
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = _AllReduceSum.apply(x.new_tensor(float(x.numel() // x.shape[1])))
        mu = _AllReduceSum.apply(x.sum(dims)) / count
        centred = x - mu.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mu.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp(min=1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


Swapped = list[tuple[nn.Module, str, nn.Module]]


def sync_batchnorm(module: nn.Module, device: torch.device) -> Swapped:
    """Swap each BatchNorm for a synchronised one sharing its parameters and buffers (after ``.to``).

    Returns what :func:`restore_batchnorm` needs to put the originals back; a no-op on one process.
    """
    if not _active():
        return []
    cls = nn.SyncBatchNorm if device.type == "cuda" else GatheredBatchNorm
    swapped: Swapped = []
    for parent in list(module.modules()):
        for name, bn in list(parent.named_children()):
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or isinstance(bn, (nn.SyncBatchNorm,
                                                                                      GatheredBatchNorm)):
                continue
            sync = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, key, getattr(bn, key))
            sync.train(bn.training)
            setattr(parent, name, sync)
            swapped.append((parent, name, bn))
    return swapped


def restore_batchnorm(swapped: Swapped) -> None:
    for parent, name, bn in reversed(swapped):
        setattr(parent, name, bn)
