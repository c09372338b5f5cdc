"""The poison classifier (PatchSearch §4 "Poison classification", PoisonCAM §4.4, spec 4.6).

A small ResNet learns "a top-k candidate patch is pasted here" from the training images (label 0)
and the same images with a random top-k patch pasted at a random place and size (label 1). The
top ``p`` fraction of scored images is dropped from the negatives, the top-k / bottom-k images form
a proxy validation set for F1 early stopping, and the mean logits of an ensemble decide removal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from benchsuite.core.errors import BenchError
from benchsuite.poison_search.search import SearchResult
from benchsuite.ssl.augment import AugmentConfig, color_jitter, normalize, random_grayscale, random_resized_crop


@dataclass(frozen=True)
class ClassifierConfig:
    """Poison classifier settings; the defaults live in the defense configs."""

    top_k: int  # patches / proxy-val positives (and as many bottom-ranked negatives)
    top_p: float  # fraction of the dataset, highest scores first, dropped from the negatives
    models: int  # ensemble size (mean logits)
    width: int  # first-stage channels of the ResNet with BasicBlock layers (1, 1, 1, 1)
    stem_stride: int  # 2 = 4x cheaper at small cost (see benchsuite.nets.backbones.small_resnet)
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    max_iterations: int  # cosine schedule length and hard stop
    eval_every: int  # iterations between proxy-val evaluations (one at iteration 0 too)
    patience: int  # stop when the last `patience` integer-percent F1 values are all equal
    paste_prob: float  # probability that a training sample is a positive
    patch_scale: tuple[float, float]  # pasted patch side, fraction of the image side (min, max)
    patch_margin: float  # distance of the pasted patch from the border, fraction of the side
    augment: AugmentConfig  # random resized crop + flip, colour jitter, grayscale (no blur)
    # compat = "code": the official split (top ceil(p x N) of the whole ranking dropped, the k lowest-ranked
    # images as validation negatives) instead of the suite's (see :func:`split_by_rank`)
    official_split: bool = False


class PoisonClassifier:
    """The trained ensemble: the mean logits of its models decide, on the training images or any new ones."""

    def __init__(self, models: list[nn.Module], augment: AugmentConfig, device: torch.device) -> None:
        self.models, self.augment, self.device = models, augment, device

    def model_logits(self, model: nn.Module, images: np.ndarray, indices: np.ndarray | None = None) -> torch.Tensor:
        """One model's logits on ``images[indices]`` (all when None), uint8 (N, H, W, 3), in batches of 512."""
        cuda = self.device.type == "cuda"
        indices = np.arange(len(images)) if indices is None else indices
        model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(indices), 512):
                u8 = torch.from_numpy(np.ascontiguousarray(images[indices[start:start + 512]]))
                x = normalize(u8.to(self.device).permute(0, 3, 1, 2).float().div_(255), self.augment)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
                    out.append(model(x.contiguous(memory_format=torch.channels_last) if cuda else x).float())
        return torch.cat(out) if out else torch.zeros(0, 2, device=self.device)

    def logits(self, images: np.ndarray) -> torch.Tensor:
        """Mean logits of the ensemble."""
        total = None
        for model in self.models:
            logits = self.model_logits(model, images)
            total = logits if total is None else total + logits
        return total / len(self.models)

    def score(self, images: np.ndarray) -> np.ndarray:
        """(N,) float32 P(poisonous) of new uint8 (N, H, W, 3) images."""
        return self.logits(images).softmax(1)[:, 1].cpu().numpy().astype(np.float32)

    def flag(self, images: np.ndarray) -> np.ndarray:
        """(N,) bool: what the ensemble would remove (the filter's decision)."""
        return self.logits(images).argmax(1).cpu().numpy() == 1


@dataclass
class ClassifierResult:
    remove: np.ndarray  # (N,) bool, predicted poisonous by the ensemble
    probability: np.ndarray  # (N,) float32, ensemble P(poisonous)
    f1: list[list[int]]  # proxy-val F1 in integer percent at every evaluation, per model
    iterations: list[int]  # iterations each model trained
    ensemble: PoisonClassifier | None = None  # the trained models, to judge new images (the pasting control)


@dataclass
class Split:
    val_pos: np.ndarray
    val_neg: np.ndarray
    pool: np.ndarray  # training images (negatives; positives are pasted copies)


def split_by_rank(result: SearchResult, k: int, top_p: float, rng: np.random.Generator,
                  official: bool = False) -> Split:
    """Proxy val = top-k (positive) + bottom-k (negative); pool = the rest minus the top ``top_p`` scored.

    Bottom-k: k random unscored images (all rank last, tied) when there are enough, else the lowest
    ranked. Only scored images count among the dropped "highest scores" (PatchSearch scores unscored
    images 0, so its top 10 % can hold arbitrary unscored images). ``official`` (compat = "code"): the
    official code's split, the top ``ceil(top_p x N)`` of the whole ranking dropped (unscored images
    included) and the k lowest-ranked images as the negatives.
    """
    n, ranking, n_scored = len(result.scores), result.ranking(), int(result.scored.sum())
    if k < 1:
        raise BenchError(f"top_k={k} must be >= 1")
    if 2 * k > n:
        raise BenchError(f"top_k={k} needs at least {2 * k} images (top-k and bottom-k), the dataset has {n}: "
                         "lower top_k")
    if n_scored == 0:
        raise BenchError("the search scored no image: check num_clusters and samples_per_iteration")
    if official:
        top, bottom, dropped = ranking[:k], ranking[-k:], ranking[: math.ceil(top_p * n)]
    else:
        top = ranking[: min(k, n_scored)]
        unscored = ranking[n_scored:]
        bottom = rng.choice(unscored, k, replace=False) if len(unscored) >= k else ranking[-k:]
        dropped = ranking[: min(math.ceil(top_p * n), n_scored)]  # only scored images count as "high scores"
    pool = np.setdiff1d(np.arange(n), np.concatenate([top, bottom, dropped]))
    if len(pool) == 0:
        raise BenchError(f"no training image left for the poison classifier: lower top_p ({top_p}) or top_k ({k})")
    return Split(top, np.setdiff1d(bottom, top), pool)


def paste_scaled(x: torch.Tensor, patches: torch.Tensor, which: torch.Tensor, cfg: ClassifierConfig,
                 gen: torch.Generator) -> torch.Tensor:
    """Paste a random patch of ``patches`` (k, 3, w, w) resized to a random side at a random place on rows ``which``.

    One ``grid_sample`` renders every patch at its own size and place (bilinear resize).
    """
    rows = torch.nonzero(which).flatten()
    m, (_, _, height, width), dev = len(rows), x.shape, x.device
    if m == 0:
        return x
    side = min(height, width)
    lo = max(1, round(cfg.patch_scale[0] * side))
    hi = min(side, max(lo, round(cfg.patch_scale[1] * side)))
    s = torch.randint(lo, hi + 1, (m,), generator=gen, device=dev).float()
    margin = round(cfg.patch_margin * side)
    room_x = (width - 2 * margin - s).clamp(min=0)
    room_y = (height - 2 * margin - s).clamp(min=0)
    base_x = torch.where(width - 2 * margin - s >= 0, torch.full_like(s, margin), torch.zeros_like(s))
    base_y = torch.where(height - 2 * margin - s >= 0, torch.full_like(s, margin), torch.zeros_like(s))
    px = base_x + torch.floor(torch.rand(m, generator=gen, device=dev) * (room_x + 1))
    py = base_y + torch.floor(torch.rand(m, generator=gen, device=dev) * (room_y + 1))
    pick = torch.randint(len(patches), (m,), generator=gen, device=dev)
    theta = torch.zeros(m, 2, 3, device=dev)
    theta[:, 0, 0] = width / s
    theta[:, 1, 1] = height / s
    theta[:, 0, 2] = -((2 * px + s) / width - 1) * width / s
    theta[:, 1, 2] = -((2 * py + s) / height - 1) * height / s
    grid = F.affine_grid(theta, [m, x.shape[1], height, width], align_corners=False)
    rendered = F.grid_sample(patches[pick], grid, mode="bilinear", padding_mode="border", align_corners=False)
    cols = torch.arange(width, device=dev)
    lines = torch.arange(height, device=dev)
    inside_x = (cols >= px[:, None]) & (cols < (px + s)[:, None])
    inside_y = (lines >= py[:, None]) & (lines < (py + s)[:, None])
    inside = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    out = x.clone()
    out[rows] = torch.where(inside, rendered, x[rows])
    return out


def classifier_model(width: int, stem_stride: int) -> nn.Module:
    """ResNet with BasicBlock layers (1, 1, 1, 1), stage widths width x (1, 2, 4, 8) and a 2-way head: PatchSearch's
    "ResNet-18 with fewer parameters" (torchvision's ResNet, width 64), here with a CIFAR stem (3x3 convolution of
    ``width`` channels, no max-pool) for small images.

    Residual branches are not zero-initialised, as in torchvision's default: with timm's zero-init the
    classifier idles for hundreds of iterations before it starts to learn.
    """
    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=2, channels=tuple(width * 2**i for i in range(4)),
                   zero_init_last=False)
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stem_stride, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.Identity()
    model.layer1[0] = BasicBlock(width, width)  # the stem now has the first stage's width: no downsample needed
    return model


def f1_percent(pred: np.ndarray, truth: np.ndarray) -> int:
    """F1 of the positive class as an integer percent (truncated, as PatchSearch compares it)."""
    tp = int((pred & truth).sum())
    denom = 2 * tp + int((pred & ~truth).sum()) + int((~pred & truth).sum())
    return int(100 * 2 * tp / denom) if denom else 0


class _Trainer:
    """Shared state for training the ensemble members: data, patches, proxy-val tensors."""

    def __init__(self, images: np.ndarray, patches: np.ndarray, split: Split, cfg: ClassifierConfig,
                 device: torch.device) -> None:
        self.cfg, self.device, self.split = cfg, device, split
        self.host = np.ascontiguousarray(images)
        self.images = torch.from_numpy(self.host)  # uint8, stays on the host
        self.patches = self._unit(torch.from_numpy(np.ascontiguousarray(patches)))
        val = np.concatenate([split.val_pos, split.val_neg])
        self.val_idx = val
        self.val_truth = np.concatenate([np.ones(len(split.val_pos), bool), np.zeros(len(split.val_neg), bool)])
        self.cuda = device.type == "cuda"

    def _unit(self, u8: torch.Tensor) -> torch.Tensor:
        return u8.to(self.device).permute(0, 3, 1, 2).float().div_(255)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def batch(self, gen: torch.Generator, host_gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        pick = torch.randint(len(self.split.pool), (cfg.batch_size,), generator=host_gen)
        x = self._unit(self.images[torch.from_numpy(self.split.pool)[pick]])
        x = random_resized_crop(x, cfg.augment, gen)
        labels = torch.rand(cfg.batch_size, generator=gen, device=self.device) < cfg.paste_prob
        x = paste_scaled(x, self.patches, labels, cfg, gen)
        x = random_grayscale(color_jitter(x, cfg.augment, gen), cfg.augment, gen)
        return self._layout(normalize(x, cfg.augment)), labels.long()

    def logits(self, model: nn.Module, indices: np.ndarray) -> torch.Tensor:
        return PoisonClassifier([model], self.cfg.augment, self.device).model_logits(model, self.host, indices)

    def train(self, seed: int) -> tuple[nn.Module, list[int], int]:
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = classifier_model(cfg.width, cfg.stem_stride).to(self.device)
        if self.cuda:
            model.to(memory_format=torch.channels_last)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        host_gen = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.max_iterations))
        history: list[int] = []
        it = 0
        for it in range(cfg.max_iterations + 1):
            if it % cfg.eval_every == 0:
                pred = self.logits(model, self.val_idx).argmax(1).cpu().numpy() == 1
                history.append(f1_percent(pred, self.val_truth))
                if len(history) > cfg.patience and len(set(history[-cfg.patience:])) == 1:
                    break
            if it == cfg.max_iterations:
                break
            model.train()
            x, y = self.batch(gen, host_gen)
            with self._autocast():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return model, history, it


def train_poison_classifier(images: np.ndarray, result: SearchResult, cfg: ClassifierConfig, seed: int,
                            device: torch.device | str = "cpu") -> ClassifierResult:
    """Train the ensemble on ``images`` with the search's top-k patches; predict over all images."""
    device = torch.device(device)
    if cfg.models < 1:
        raise BenchError(f"classifier models={cfg.models} must be >= 1")
    split = split_by_rank(result, cfg.top_k, cfg.top_p, np.random.default_rng([seed, 29]), cfg.official_split)
    trainer = _Trainer(images, result.patches(images, cfg.top_k), split, cfg, device)
    models, histories, iterations = [], [], []
    for m in range(cfg.models):
        model, history, its = trainer.train(seed * 1000 + m)
        models.append(model)
        histories.append(history)
        iterations.append(its)
    ensemble = PoisonClassifier(models, cfg.augment, device)
    mean = ensemble.logits(trainer.host)
    prob = mean.softmax(1)[:, 1].cpu().numpy().astype(np.float32)
    return ClassifierResult(mean.argmax(1).cpu().numpy() == 1, prob, histories, iterations, ensemble)
