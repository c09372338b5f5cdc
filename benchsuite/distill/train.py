"""Distil a suspect encoder (the teacher) into a student on clean images only (spec 10.2).

The trigger never appears in the defender's clean images, so the student learns the teacher's clean
behaviour and not its reaction to the trigger. Both see the same augmented view of each image
(CompRess); with ``cache_teacher`` the teacher's features of the un-augmented images stand in.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.core.console import progress_bar
from benchsuite.distill.config import DistillConfig
from benchsuite.distill.losses import AnchorBank, cosine_distance, similarity_kl
from benchsuite.ssl.augment import AugmentConfig, augment, to_float


def lr_at(epoch: int, cfg: DistillConfig) -> float:
    """The step schedule: ``lr`` times ``lr_drop_factor`` for each drop the epoch has passed."""
    drops = sum(epoch >= round(share * cfg.epochs) for share in cfg.lr_drops)
    return cfg.lr * cfg.lr_drop_factor**drops


@contextmanager
def _teacher_mode(teacher: nn.Module) -> Iterator[nn.Module]:
    training = teacher.training
    teacher.eval()
    try:
        yield teacher
    finally:
        teacher.train(training)


@torch.no_grad()
def _ema(key: nn.Module, student: nn.Module, momentum: float) -> None:
    for k, s in zip(key.parameters(), student.parameters()):
        k.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def distil(teacher: nn.Module, student: nn.Module, images: np.ndarray, cfg: DistillConfig, seed: int,
           device: torch.device, mean: tuple[float, ...], std: tuple[float, ...],
           teacher_features: np.ndarray | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``student`` on uint8 ``images`` (N, H, W, 3) to match ``teacher``; returns it and the epoch log.

    ``teacher_features`` (N, d): the teacher's features of ``images``, required by ``cache_teacher``.
    """
    if cfg.cache_teacher and (teacher_features is None or len(teacher_features) != len(images)):
        raise ValueError("cache_teacher needs the teacher's features of every image")
    view = AugmentConfig(crop_scale=tuple(cfg.crop_scale), jitter_prob=0.0, gray_prob=0.0, mean=tuple(mean),
                         std=tuple(std))
    gen = torch.Generator(device=device).manual_seed(seed)
    data = torch.from_numpy(images).to(device)
    cached = torch.as_tensor(teacher_features, dtype=torch.float32, device=device) if cfg.cache_teacher else None
    student.to(device).train().requires_grad_(True)
    teacher.to(device)
    key = banks = None
    if cfg.loss == "compress":
        key = copy.deepcopy(student).requires_grad_(False)  # train mode: its BatchNorm uses batch statistics
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, len(images))
    steps = max(1, len(images) // bs)  # full batches only: BatchNorm needs more than one image
    log: list[dict[str, float]] = []
    with _teacher_mode(teacher), progress_bar("distillation", total=cfg.epochs) as advance:
        for epoch in range(cfg.epochs):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, cfg)
            order = torch.randperm(len(images), generator=gen, device=device)
            total = 0.0
            for i in range(steps):
                rows = order[i * bs:(i + 1) * bs]
                x = augment(to_float(data[rows]), view, gen)
                with torch.no_grad():
                    t = F.normalize(cached[rows] if cached is not None else teacher(x), dim=-1)
                s = F.normalize(student(x), dim=-1)
                if key is not None:
                    if banks is None:  # sized by the first batch's embeddings
                        banks = (AnchorBank(cfg.queue_size, t.shape[1], gen, device),
                                 AnchorBank(cfg.queue_size, s.shape[1], gen, device))
                    loss = similarity_kl(t, s, *banks, cfg.temperature)
                else:
                    loss = cosine_distance(t, s)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if key is not None and banks is not None:
                    # this batch joins the anchors after the step that compared against the older ones
                    with torch.no_grad():
                        banks[0].push(t)
                        banks[1].push(F.normalize(key(x), dim=-1))
                    _ema(key, student, cfg.key_momentum)
                total += loss.item()
            entry = {"epoch": epoch + 1, "loss": total / steps, "lr": opt.param_groups[0]["lr"]}
            if key is None:  # the cosine loss aligns the two spaces; CompRess's relations do not
                with torch.no_grad():
                    entry["cos_to_teacher"] = F.cosine_similarity(s, t, dim=-1).mean().item()
            log.append(entry)
            advance(info=f"loss {entry['loss']:.3f}")
    return student.eval(), log
