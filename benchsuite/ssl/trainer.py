"""SSL pretraining loop: batched GPU-or-CPU augmentation, lr schedule, resumable checkpoints.

One process, or every rank under torchrun (:mod:`benchsuite.core.distributed`): rank r takes rows
``r*b:(r+1)*b`` of each global batch (b = batch / ranks) and augments them with the random numbers
one process would draw for those rows, BatchNorm is synchronised, the methods gather their
negatives, and gradients are averaged across ranks before each optimiser step. With
``accumulate_steps`` = k each rank's share is split into k micro-batches whose gradients add up
before the step; contrastive losses then see only a micro-batch's negatives and BatchNorm only a
micro-batch's statistics, so the result is not that of the full batch (more steps, not a fix).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from benchsuite.core import distributed
from benchsuite.core.cache import added_field
from benchsuite.core.checkpoint import atomic_write, load_tensors, save_tensors
from benchsuite.core.console import progress_bar
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Count, NonNegative, Positive, Sized, Unit, at_least
from benchsuite.ssl.augment import AugmentConfig, augment, to_float
from benchsuite.ssl.base import SSLMethod

OPTIMIZERS = ("sgd", "adamw", "adam")


@dataclass(frozen=True)
class TrainConfig:
    epochs: Count = 200
    batch_size: Annotated[int, at_least(2)] = 256  # the global batch, over all ranks and accumulation steps
    lr: Positive = 0.06  # MoCo-v2 R18 recipe: 0.06 at batch 256 (scaled by batch/256)
    weight_decay: NonNegative = 5e-4
    momentum: Unit = 0.9
    optimizer: str = "sgd"  # sgd | adamw | adam
    warmup_epochs: Count = 0
    checkpoint_every: Sized = 1  # epochs between resumable checkpoints
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # micro-batches per optimiser step (a batch that does not fit in memory)
    accumulate_steps: Sized = added_field(1)
    # the second view's augmentation when the recipe is asymmetric (MoCo-v3, BYOL); None: as the first
    augment2: AugmentConfig | None = added_field(None)
    # a step schedule instead of the cosine: lr x lr_drop_factor at each of these epochs (BYOL R18)
    lr_drop_epochs: tuple[int, ...] = added_field(())
    lr_drop_factor: Positive = added_field(0.2)
    # epochs after which the backbone is kept (snapshot-eNNN.safetensors; the last epoch's is the final
    # encoder) and probed: a learning curve of this one run
    snapshots: tuple[int, ...] = added_field(())

    def __post_init__(self) -> None:
        object.__setattr__(self, "snapshots", tuple(sorted(set(self.snapshots))))
        outside = [e for e in self.snapshots if not 1 <= e <= self.epochs]
        if outside:
            raise BenchError(f"train.snapshots {outside} outside 1..{self.epochs} (the epochs trained): "
                             f"pick epochs in that range, e.g. --set train.snapshots=[{max(1, self.epochs // 2)}]")
        if self.optimizer not in OPTIMIZERS:
            raise BenchError(f"unknown optimizer {self.optimizer!r}: set train.optimizer to one of "
                             f"{', '.join(OPTIMIZERS)}")
        if self.accumulate_steps < 1:
            raise BenchError(f"train.accumulate_steps = {self.accumulate_steps} must be >= 1")
        if self.batch_size < 2:
            raise BenchError(f"train.batch_size = {self.batch_size} must be >= 2")


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warmup, then half-cosine to zero (or steps at ``lr_drop_epochs``); base lr scaled by batch/256."""
    base = cfg.lr * cfg.batch_size / 256
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return base * (step + 1) / warm
    if cfg.lr_drop_epochs:
        epoch = step // steps_per_epoch
        return base * cfg.lr_drop_factor ** sum(epoch >= e for e in cfg.lr_drop_epochs)
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))


def _optimizer(groups: list[tuple[list[torch.nn.Parameter], float]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser over ``groups`` of (parameters, lr scale); each group keeps its scale as ``lr_scale``."""
    params = [{"params": group, "lr_scale": scale} for group, scale in groups]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return gen


def batch_sizes(cfg: TrainConfig, n: int, world: int) -> tuple[int, int]:
    """(global batch, micro-batch per rank) for ``n`` images on ``world`` ranks."""
    unit = world * cfg.accumulate_steps
    if cfg.batch_size % unit:
        raise BenchError(f"train.batch_size {cfg.batch_size} does not split over {world} process(es) x "
                         f"{cfg.accumulate_steps} accumulation step(s): use a multiple of {unit}")
    batch = min(cfg.batch_size, n) // unit * unit
    if batch // unit < 2:
        raise BenchError(f"{n} images leave micro-batches of {batch // unit} image(s) on {world} process(es) x "
                         f"{cfg.accumulate_steps} accumulation step(s): use fewer processes or accumulation steps")
    return batch, batch // unit


def pretrain(method: SSLMethod, images: np.ndarray, cfg: TrainConfig, seed: int,
             workdir: Path, device: torch.device | str = "cpu", label: str = "pretrain") -> SSLMethod:
    """Train ``method`` on uint8 ``images`` (N, H, W, 3); resume from ``workdir`` if a checkpoint is there.

    The batch order and augmentations of epoch e depend only on (seed, e) (on every rank alike), so a
    run resumed at an epoch boundary is identical on CPU to an uninterrupted one. Under torchrun every
    rank calls this with the same arguments; only rank 0 writes the checkpoint.
    """
    device = torch.device(device)
    world, rank = distributed.world_size(), distributed.rank()
    method.to(device)
    if device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    n = len(images)
    take = _batch_source(images, device)
    if n < 2:
        raise BenchError(f"cannot pretrain on {n} image(s): the dataset is empty after filtering")
    batch, micro = batch_sizes(cfg, n, world)
    local = batch // world
    method.check_batch(micro * world)
    steps_per_epoch = n // batch
    total = cfg.epochs * steps_per_epoch
    groups = method.param_groups()
    params = [p for group, _ in groups for p in group]
    optimizer = _optimizer(groups, cfg)
    start_epoch, history = _resume(method, optimizer, workdir)
    if distributed.broadcast_object(start_epoch) != start_epoch:
        raise BenchError(f"rank {rank} found another checkpoint in {workdir} than rank 0: "
                         "give every rank the same --out")
    distributed.broadcast_module(method)
    swapped = distributed.sync_batchnorm(method, device)
    shard = (rank * local, batch) if world > 1 else None
    try:
        with progress_bar(label, total=cfg.epochs, start=start_epoch) as advance:
            for epoch in range(start_epoch, cfg.epochs):
                method.train()
                gen = _epoch_generator(seed, epoch, device)
                method.generator = gen
                order = torch.randperm(n, generator=gen, device=device)
                losses = []
                for i in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + i
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(cfg, step, total, steps_per_epoch) * group.get("lr_scale", 1.0)
                    first = i * batch + rank * local
                    x = to_float(take(order[first:first + local]))
                    v1 = augment(x, cfg.augment, gen, shard)
                    v2 = augment(x, cfg.augment2 or cfg.augment, gen, shard)
                    if device.type == "cuda":
                        v1 = v1.contiguous(memory_format=torch.channels_last)
                        v2 = v2.contiguous(memory_format=torch.channels_last)
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(_accumulate(method, v1, v2, micro, cfg.accumulate_steps, device, epoch))
                    distributed.average_gradients(params)
                    optimizer.step()
                    method.after_step((step + 1) / total)
                history.append(distributed.mean(float(np.mean(losses))))
                advance(1, info=f"loss {history[-1]:.3f}")
                # the last epoch's snapshot is the trained backbone itself, saved by the caller
                if distributed.is_main() and epoch + 1 in cfg.snapshots and epoch + 1 < cfg.epochs:
                    save_tensors(snapshot_path(workdir, epoch + 1), method.backbone.state_dict())
                if distributed.is_main() and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
                    _save(method, optimizer, epoch + 1, workdir, history)
    finally:
        distributed.restore_batchnorm(swapped)
    return method


def _batch_source(images: np.ndarray, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``take(indices)``: the uint8 images at ``indices`` on ``device``.

    An in-memory array is moved to the device once; a memory-mapped one (the stage store, maybe larger
    than RAM or the GPU) is read batch by batch, which gives the same tensors.
    """
    if not isinstance(images, np.memmap):
        data = torch.from_numpy(images).to(device)
        return lambda idx: data[idx]
    return lambda idx: torch.from_numpy(np.asarray(images[idx.cpu().numpy()])).to(device)


def snapshot_path(workdir: Path, epoch: int) -> Path:
    """Where :func:`pretrain` keeps the backbone's weights after ``epoch`` (one of ``train.snapshots``)."""
    return Path(workdir) / f"snapshot-e{epoch:03d}.safetensors"


def _accumulate(method: SSLMethod, v1: torch.Tensor, v2: torch.Tensor, micro: int, steps: int,
                device: torch.device, epoch: int) -> float:
    """Forward and backward over ``steps`` micro-batches of ``micro`` images; the step's mean loss."""
    total = 0.0
    for a in range(steps):
        part = slice(a * micro, (a + 1) * micro)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = method.loss(v1[part], v2[part])
        if not torch.isfinite(loss):
            raise BenchError(f"SSL loss became {loss.item()} at epoch {epoch}: lower the lr")
        (loss / steps if steps > 1 else loss).backward()
        total += loss.item() / steps
    return total


def _save(method: SSLMethod, optimizer: torch.optim.Optimizer, epochs_done: int, workdir: Path,
          history: list[float]) -> None:
    # weights and optimizer in one atomic file: a kill between two writes could pair mismatched epochs
    state = {"epochs_done": epochs_done, "model": method.state_dict(), "optimizer": optimizer.state_dict(),
             "losses": list(history)}
    atomic_write(workdir / "trainer_state.pt", lambda tmp: torch.save(state, tmp))


def _resume(method: SSLMethod, optimizer: torch.optim.Optimizer, workdir: Path) -> tuple[int, list[float]]:
    """Load the checkpoint in ``workdir`` if any: (epochs done, mean loss of each epoch so far)."""
    state_path = workdir / "trainer_state.pt"
    if not state_path.is_file():
        return 0, []
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if "model" in state:
        method.load_state_dict(state["model"])
    else:  # a checkpoint written by benchsuite 0.1: weights in their own file
        method.load_state_dict(load_tensors(workdir / "checkpoint.safetensors"))
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epochs_done"]), [float(v) for v in state.get("losses", [])]


def loss_history(workdir: Path) -> list[float]:
    """The mean training loss of each finished epoch, from the checkpoint in ``workdir``."""
    path = Path(workdir) / "trainer_state.pt"
    if not path.is_file():
        return []
    return [float(v) for v in torch.load(path, map_location="cpu", weights_only=True).get("losses", [])]
