"""SSL pretraining loop: batched GPU-or-CPU augmentation, cosine schedule, resumable checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchsuite.checkpoint import atomic_write, load_tensors, save_tensors
from benchsuite.console import progress_bar
from benchsuite.errors import BenchError
from benchsuite.ssl.augment import AugmentConfig, augment, to_float
from benchsuite.ssl.base import SSLMethod


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.06  # MoCo-v2 R18 recipe: 0.06 at batch 256 (scaled by batch/256)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"  # sgd | adamw
    warmup_epochs: int = 0
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warmup, then half-cosine to zero; base lr scaled by batch/256."""
    base = cfg.lr * cfg.batch_size / 256
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))


def _optimizer(method: SSLMethod, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise BenchError(f"unknown optimizer {cfg.optimizer!r}: use sgd or adamw")


def _epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return gen


def pretrain(method: SSLMethod, images: np.ndarray, cfg: TrainConfig, seed: int,
             workdir: Path, device: torch.device | str = "cpu", label: str = "pretrain") -> SSLMethod:
    """Train ``method`` on uint8 ``images`` (N, H, W, 3); resume from ``workdir`` if a checkpoint is there.

    The batch order and augmentations of epoch e depend only on (seed, e), so a run resumed at
    an epoch boundary is identical on CPU to an uninterrupted one.
    """
    device = torch.device(device)
    method.to(device)
    if device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    data = torch.from_numpy(images).to(device)
    n = len(data)
    if n < 2:
        raise BenchError(f"cannot pretrain on {n} image(s): the dataset is empty after filtering")
    batch = min(cfg.batch_size, n)
    steps_per_epoch = n // batch
    total = cfg.epochs * steps_per_epoch
    optimizer = _optimizer(method, cfg)
    start_epoch = _resume(method, optimizer, workdir)
    with progress_bar(label, total=cfg.epochs, start=start_epoch) as advance:
        for epoch in range(start_epoch, cfg.epochs):
            method.train()
            gen = _epoch_generator(seed, epoch, device)
            order = torch.randperm(n, generator=gen, device=device)
            losses = []
            for i in range(steps_per_epoch):
                step = epoch * steps_per_epoch + i
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(cfg, step, total, steps_per_epoch)
                x = to_float(data[order[i * batch:(i + 1) * batch]])
                v1, v2 = augment(x, cfg.augment, gen), augment(x, cfg.augment, gen)
                if device.type == "cuda":
                    v1 = v1.contiguous(memory_format=torch.channels_last)
                    v2 = v2.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = method.loss(v1, v2)
                if not torch.isfinite(loss):
                    raise BenchError(f"SSL loss became {loss.item()} at epoch {epoch}: lower the lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                method.after_step((step + 1) / total)
                losses.append(loss.item())
            advance(1, info=f"loss {np.mean(losses):.3f}")
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                _save(method, optimizer, epoch + 1, workdir)
    return method


def _save(method: SSLMethod, optimizer: torch.optim.Optimizer, epochs_done: int, workdir: Path) -> None:
    save_tensors(workdir / "checkpoint.safetensors", method.state_dict())
    state = {"epochs_done": epochs_done, "optimizer": optimizer.state_dict()}
    atomic_write(workdir / "trainer_state.pt", lambda tmp: torch.save(state, tmp))


def _resume(method: SSLMethod, optimizer: torch.optim.Optimizer, workdir: Path) -> int:
    ckpt, state_path = workdir / "checkpoint.safetensors", workdir / "trainer_state.pt"
    if not (ckpt.is_file() and state_path.is_file()):
        return 0
    method.load_state_dict(load_tensors(ckpt))
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epochs_done"])
