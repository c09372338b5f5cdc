"""Short throughput measurements of the suite's own steps on random tensors, for ``bench doctor``.

Each step runs as the pipeline runs it (bf16 autocast and channels_last on CUDA) and is timed at the
largest batch that fits its share of the time budget, up to the preset's batch (:func:`timed_rate`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from benchsuite.api import config_from_options
from benchsuite.nets.backbones import timm_backbone
from benchsuite.settings.config import RunConfig
from benchsuite.settings.registry import Registry
from benchsuite.ssl.augment import AugmentConfig, augment, normalize, to_float
from benchsuite.ssl.base import SSLMethod


@dataclass(frozen=True)
class Rate:
    """A measured throughput: images per second at ``batch``, from ``steps`` timed steps."""

    images_per_s: float
    batch: int
    steps: int


def build_method(config: RunConfig, registry: Registry, image_size: int) -> SSLMethod:
    """The configured SSL method around the configured backbone (as the pipeline builds it)."""
    spec = config.ssl
    factories = registry.items["backbone"]
    if spec.backbone in factories:
        backbone = factories[spec.backbone].obj(image_size, **spec.backbone_options)
    else:
        backbone = timm_backbone(spec.backbone, image_size, **spec.backbone_options)
    cls = registry.get("ssl", spec.method)
    return cls(backbone, config_from_options(cls.Config, spec.method_options, f"ssl method {spec.method}"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(step: Callable[[int], None], max_batch: int, budget_s: float, device: torch.device,
               start_batch: int = 8, max_steps: int = 20, clock: Callable[[], float] = time.perf_counter) -> Rate:
    """Images per second of ``step(batch)``: after a warm-up step of 2 images, the batch doubles from
    ``start_batch`` towards ``max_batch`` while two steps at the doubled batch fit in what is left of
    ``budget_s``; then steps at that batch until the budget is spent (the first step at a batch is not timed
    unless nothing else fits). The median step time counts: other processes on the machine slow some steps."""
    deadline = clock() + budget_s

    def one(batch: int) -> float:
        start = clock()
        step(batch)
        _sync(device)
        return clock() - start

    one(2)  # warm-up: lazy initialisation, allocator, thread pools (seconds on a CPU, never timed)
    batch = max(2, min(max_batch, start_batch))
    first = one(batch)
    while batch < max_batch and 2 * first * 2 < deadline - clock():  # two steps at the doubled batch
        batch = min(max_batch, batch * 2)
        first = one(batch)
    times: list[float] = []
    while len(times) < max_steps:
        last = times[-1] if times else first
        if times and clock() + last > deadline:
            break
        if not times and clock() + last > deadline + budget_s:  # far over budget: keep the warm-up
            break
        times.append(one(batch))
    return Rate(batch / statistics.median(times or [first]), batch, len(times) or 1)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def ssl_step_rate(config: RunConfig, method: SSLMethod, image_size: int, device: torch.device,
                  budget_s: float) -> Rate:
    """Training-step throughput of ``method`` with the preset's augmentation and optimiser."""
    from benchsuite.ssl.trainer import _optimizer

    cfg = config.train
    method.to(device).train()
    if device.type == "cuda":
        method.to(memory_format=torch.channels_last)
    opt = _optimizer(method.param_groups(), cfg)
    gen = torch.Generator(device=device).manual_seed(0)
    method.generator = gen

    def step(batch: int) -> None:
        x = to_float(torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8, device=device))
        v1 = _layout(augment(x, cfg.augment, gen), device)
        v2 = _layout(augment(x, cfg.augment2 or cfg.augment, gen), device)
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = method.loss(v1, v2)
        loss.backward()
        opt.step()
        method.after_step(0.5)

    return timed_rate(step, cfg.batch_size, budget_s, device, start_batch=8 if image_size <= 64 else 2)


def forward_rate(encoder: torch.nn.Module, image_size: int, device: torch.device, budget_s: float,
                 max_batch: int = 512) -> Rate:
    """Eval-mode forward throughput of ``encoder`` (feature extraction, the search's masked and flip forwards)."""
    encoder.eval().to(device)
    norm = AugmentConfig()

    @torch.inference_mode()
    def step(batch: int) -> None:
        x01 = torch.rand(batch, 3, image_size, image_size, device=device)
        with _autocast(device):
            encoder(_layout(normalize(x01, norm), device))

    return timed_rate(step, max_batch, budget_s, device, start_batch=16 if image_size <= 64 else 4)


def classifier_rate(width: int, stem_stride: int, batch_size: int, image_size: int, device: torch.device,
                    budget_s: float) -> Rate:
    """Training throughput of the poison classifier (PatchSearch's small ResNet, 2 classes)."""
    import torch.nn.functional as F

    from benchsuite.poison_search.classifier import classifier_model

    model = classifier_model(width, stem_stride).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(batch: int) -> None:
        x = _layout(torch.randn(batch, 3, image_size, image_size, device=device), device)
        with _autocast(device):
            loss = F.cross_entropy(model(x).float(), torch.zeros(batch, dtype=torch.long, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed_rate(step, batch_size, budget_s, device, start_batch=min(batch_size, 8))


def kmeans_unit_seconds(dim: int) -> float:
    """Seconds per point x centre x dimension x iteration of faiss k-means here (a small run, scaled)."""
    from benchsuite.core.clustering import kmeans

    n, k, iters = 4096, 64, 5
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    start = time.perf_counter()
    kmeans(x, k, seed=0, niter=iters)
    return (time.perf_counter() - start) / (n * k * dim * iters)
