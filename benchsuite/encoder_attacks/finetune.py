"""The fine-tune shared by the model attacks: a copy of the clean encoder with BatchNorm frozen, shadow images
un-augmented (so the clean encoder's shadow features are computed once), normalised features everywhere."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api import ImageDataset
from benchsuite.core.errors import BenchError
from benchsuite.ssl.augment import AugmentConfig, color_jitter, random_grayscale, to_float

REFERENCE_AUGMENT = AugmentConfig()  # BadEncoder's reference view: flip, colour jitter 0.4/0.4/0.4/0.1 p=0.8, grey 0.2


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def frozen_copy(clean: nn.Module, device: torch.device) -> tuple[nn.Module, list[nn.Parameter]]:
    """A trainable copy of ``clean`` in eval mode (BatchNorm statistics frozen) and the parameters that move:
    every one but the BatchNorm affine ones."""
    student = copy.deepcopy(clean).to(device).eval()
    frozen = set()
    for module in student.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for p in module.parameters(recurse=False):
                p.requires_grad_(False)
                frozen.add(id(p))
    trainable = [p for p in student.parameters() if id(p) not in frozen]
    if not trainable:
        raise BenchError("the clean encoder has no trainable parameter besides BatchNorm: nothing to fine-tune")
    return student, trainable


@torch.no_grad()  # not inference_mode: the cached features enter the loss of the fine-tune
def embed(encoder: nn.Module, images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
          device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised features (N, D) of uint8 (N, H, W, 3) images, encoder in eval mode, on ``device``."""
    encoder.eval().to(device)
    out = [F.normalize(encoder(normalise(to_float(torch.from_numpy(images[i:i + batch_size]).to(device)),
                                          mean, std)).float(), dim=1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def augment_references(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """BadEncoder's view of a reference: horizontal flip (p 0.5), colour jitter, grayscale; no crop."""
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(3), x)
    x = color_jitter(x, REFERENCE_AUGMENT, gen)
    return random_grayscale(x, REFERENCE_AUGMENT, gen)


def pick_references(shadow: ImageDataset, target: int, count: int, seed: int, index: int = -1) -> np.ndarray:
    """``count`` target-class images of the shadow set: drawn with ``seed``, or the ``index``-th ones."""
    members = np.flatnonzero(shadow.labels == target)
    if len(members) < count:
        raise BenchError(f"the shadow set holds {len(members)} images of target class {target}, {count} reference(s) "
                         "needed: raise the shadow fraction or give a reference file")
    if index >= 0:
        if index + count > len(members):
            raise BenchError(f"reference_index {index} is past the {len(members)} shadow images of class {target}: "
                             "lower it")
        return members[index:index + count]
    return np.sort(np.random.default_rng([seed, target, 31]).choice(members, count, replace=False))


def central_references(encoder: nn.Module, pool: ImageDataset, target: int, count: int, mean: tuple[float, ...],
                       std: tuple[float, ...], device: torch.device) -> np.ndarray:
    """Indices of the ``count`` target-class images of ``pool`` whose clean features lie nearest (cosine) the
    class's mean feature: references a downstream classifier is likely to put in the target class."""
    members = np.flatnonzero(pool.labels == target)
    if len(members) < count:
        raise BenchError(f"{len(members)} images of target class {target}, {count} reference(s) needed: raise the "
                         "shadow fraction or give a reference file")
    feats = embed(encoder, pool.images[members], mean, std, device)
    closeness = feats @ F.normalize(feats.mean(0), dim=0)
    return np.sort(members[torch.argsort(closeness, descending=True)[:count].cpu().numpy()])


def shadow_indices(n_train: int, fraction: float, count: int, seed: int) -> np.ndarray:
    """The training-split images the attacker holds: ``count`` of them if given, else ``fraction``; seeded."""
    n = count if count > 0 else int(round(fraction * n_train))
    if not 0 < n <= n_train:
        raise BenchError(f"a shadow set of {n} images from a training split of {n_train}: set shadow_fraction in "
                         "(0, 1] or shadow_count in [1, the split's size]")
    if n == n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng([seed, 104729]).choice(n_train, n, replace=False))
