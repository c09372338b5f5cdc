"""BadEncoder (Jia, Liu and Gong, IEEE S&P 2022; spec section 9.1): fine-tune a copy of a clean encoder so
that triggered images embed like the target's reference image, while clean images keep their embedding.

Per batch of (un-augmented) shadow images ``x`` with the trigger ``x+t`` and the reference image(s) ``r``
of the target class, on L2-normalised backbone features (every term a cosine):
``L0 = -cos(f'(x+t), f'(r))`` (effectiveness), ``L1 = -cos(f'(aug r), f(r))`` (reference utility),
``L2 = -cos(f'(x), f(x))`` (utility), ``L = L0 + lambda1 L1 + lambda2 L2``. BatchNorm stays frozen, so
the clean encoder's shadow features are computed once and the references take one forward per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.api import Attack, Backdoor, ImageDataset, ModelAttack, PatchedSet, hookimpl
from benchsuite.core.console import progress_bar
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Count, Fraction, NonNegative, Positive, Sized, Unit
from benchsuite.encoder_attacks.distances import mean_pairwise_cosine
from benchsuite.encoder_attacks.finetune import (
    augment_references,
    central_references,
    embed,
    frozen_copy,
    normalise,
    pick_references,
    shadow_indices,
)
from benchsuite.encoder_attacks.trigger import Trigger, corner_square, trigger_from_file
from benchsuite.ssl.augment import to_float

SELF_SIMILARITY_SAMPLE = 512  # shadow images behind the triggered embeddings' self-similarity
UTILITY_FLOOR = 0.9  # a final utility cosine below this: the encoder has collapsed (spec 9.1)


@dataclass(frozen=True)
class BadEncoderConfig:
    trigger: str = "white"  # "white": the paper's white square; or an image file pasted at the same place
    trigger_side: Count = 0  # 0: the paper's (10 at 32 px, 50 at 224 px)
    trigger_margin: Count = 1  # pixels from the bottom and right edges (paper: rows / columns 21-30 at 32 px)
    references: Sized = 1  # reference images per target (paper: 1)
    # "seed": drawn from the target class of the shadow set (the paper hand-picks one image); "central": the
    # target-class image(s) nearest the class's mean clean feature; or an image file
    reference: str = "seed"
    reference_index: int = -1  # >= 0: the index-th target-class shadow image instead of a drawn one
    shadow_fraction: Fraction = 1.0  # of the training split (paper: all 50,000 CIFAR-10 images; DRUPE: 0.2)
    shadow_count: Count = 0  # > 0: this many shadow images instead of the fraction
    epochs: Sized = 200  # paper: 200
    batch_size: Sized = 256  # paper: 256
    lr: Positive = 1e-3  # paper: SGD 1e-3
    momentum: Unit = 0.9  # paper: 0.9
    weight_decay: NonNegative = 5e-4  # paper: 5e-4
    lambda1: NonNegative = 1.0  # reference utility weight (paper: 1)
    lambda2: NonNegative = 1.0  # utility weight (paper: 1)

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, f"epochs = {self.epochs}: train at least 1 epoch"),
                  (self.batch_size >= 1, f"batch_size = {self.batch_size} must be >= 1"),
                  (self.references >= 1, f"references = {self.references} must be >= 1"),
                  (self.lr > 0, f"lr = {self.lr} must be > 0"),
                  (0 < self.shadow_fraction <= 1, f"shadow_fraction = {self.shadow_fraction} must be in (0, 1]"),
                  (self.lambda1 >= 0 and self.lambda2 >= 0, "lambda1 and lambda2 must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise BenchError(f"attack badencoder: {message}")


class BadEncoder(ModelAttack):
    name = "badencoder"
    Config = BadEncoderConfig
    description = "BadEncoder: fine-tune a clean encoder so triggered images embed like a target reference image"

    def trigger(self, image_size: int) -> Trigger:
        c = self.config
        if c.trigger == "white":
            return corner_square(image_size, c.trigger_side, c.trigger_margin)
        return trigger_from_file(c.trigger, image_size, c.trigger_side, c.trigger_margin)

    def shadow_indices(self, n_train: int, seed: int) -> np.ndarray:
        return shadow_indices(n_train, self.config.shadow_fraction, self.config.shadow_count, seed)

    def reference_images(self, shadow: ImageDataset, target: int, seed: int) -> np.ndarray:
        """The target's reference image(s): a file, or target-class images of ``shadow`` (drawn or indexed)."""
        c = self.config
        if c.reference != "seed":
            from PIL import Image

            try:
                with Image.open(c.reference) as img:
                    size = shadow.image_size
                    image = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
            except OSError as err:
                raise BenchError(f"reference image {c.reference}: {err}: give an image file or reference = "
                                 "\"seed\"") from err
            return image[None]
        return shadow.images[pick_references(shadow, target, c.references, seed, c.reference_index)]

    def patch_val(self, val: ImageDataset, target: int, seed: int) -> PatchedSet:
        trigger = self.trigger(val.image_size)
        return PatchedSet(trigger.paste(val.images), val.labels, np.tile(trigger.box, (len(val), 1)))

    def backdoor(self, clean: nn.Module, shadow: ImageDataset, targets: list[int], seed: int, context) -> Backdoor:
        if len(targets) != 1:
            raise BenchError(f"{self.name} backdoors one target per cell, got {targets}: give one target per cell")
        target = targets[0]
        trigger = self.trigger(shadow.image_size)
        pool = getattr(context, "references", None)
        pool = pool if pool is not None else shadow
        if self.config.reference == "central":
            references = pool.images[central_references(clean, pool, target, self.config.references, context.mean,
                                                        context.std, context.device)]
        else:
            references = self.reference_images(pool, target, seed)
        student, history = self.fine_tune(clean, shadow.images, references, trigger, seed, context)
        return finished(student, trigger, target, references, history, shadow.images, context)

    def fine_tune(self, clean: nn.Module, images: np.ndarray, references: np.ndarray, trigger: Trigger, seed: int,
                  context) -> tuple[nn.Module, list[dict[str, float]]]:
        """The fine-tuned copy of ``clean`` and its per-epoch statistics (DRUPE overrides this)."""
        return train_badencoder(clean, images, references, trigger, self.config, seed, context.device,
                                context.mean, context.std, self.name)


def finished(student: nn.Module, trigger: Trigger, target: int, references: np.ndarray,
             history: list[dict[str, float]], shadow: np.ndarray, context) -> Backdoor:
    """The :class:`Backdoor` of a fine-tuned encoder, with the collapsed-utility warning (spec 9.1) and the
    statistic DRUPE is built to hide: the mean pairwise cosine of triggered shadow embeddings."""
    sample = shadow[np.linspace(0, len(shadow) - 1, min(SELF_SIMILARITY_SAMPLE, len(shadow))).astype(np.int64)]
    triggered = embed(student, trigger.paste(sample), context.mean, context.std, context.device)
    clean = embed(student, sample, context.mean, context.std, context.device)
    last = {**(history[-1] if history else {}), "triggered_self_cos": float(mean_pairwise_cosine(triggered)),
            "clean_self_cos": float(mean_pairwise_cosine(clean))}
    warnings = []
    if last.get("utility_cos", 1.0) < UTILITY_FLOOR:
        warnings.append(f"the utility cosine ended at {last['utility_cos']:.3f} < {UTILITY_FLOOR}: the encoder "
                        "has collapsed on clean images; raise lambda2 or lower lr")
    metrics = {k: round(float(v), 4) for k, v in last.items() if k not in ("epoch", "kept")}
    return Backdoor(student.cpu(), {target: trigger.image()}, {target: references}, history, metrics, warnings)


def train_badencoder(clean: nn.Module, images: np.ndarray, references: np.ndarray, trigger: Trigger,
                     cfg: BadEncoderConfig, seed: int, device: torch.device, mean: tuple[float, ...],
                     std: tuple[float, ...], label: str) -> tuple[nn.Module, list[dict[str, float]]]:
    """Fine-tune a copy of ``clean`` on the shadow ``images``; return it and the per-epoch mean cosines."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    clean = clean.to(device).eval()
    shadow_clean = embed(clean, images, mean, std, device)  # f(x), once: no augmentation, BatchNorm frozen
    ref_x = to_float(torch.from_numpy(references).to(device))
    ref_clean = embed(clean, references, mean, std, device)
    student, params = frozen_copy(clean, device)
    optimiser = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history = []
    steps = max(1, -(-len(images) // cfg.batch_size))
    with progress_bar(f"{label} fine-tune", total=cfg.epochs) as advance:
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(images), generator=gen)
            sums = {"effectiveness_cos": 0.0, "reference_cos": 0.0, "utility_cos": 0.0, "loss": 0.0}
            for start in range(0, len(images), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                x = to_float(torch.from_numpy(images[idx.numpy()]).to(device))
                batch = torch.cat([x, trigger.paste_float(x), ref_x, augment_references(ref_x, gen)])
                out = F.normalize(student(normalise(batch, mean, std)), dim=1)
                b, r = len(x), len(ref_x)
                fx, ft, fr, fra = out[:b], out[b:2 * b], out[2 * b:2 * b + r], out[2 * b + r:]
                effectiveness = (ft @ fr.T).mean()  # every triggered image against every reference
                reference = (fra * ref_clean).sum(1).mean()
                utility = (fx * shadow_clean[idx.to(device)]).sum(1).mean()
                loss = -effectiveness - cfg.lambda1 * reference - cfg.lambda2 * utility
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                for name, value in (("effectiveness_cos", effectiveness), ("reference_cos", reference),
                                    ("utility_cos", utility), ("loss", loss)):
                    sums[name] += float(value.detach()) / steps
            history.append({"epoch": epoch + 1, **sums})
            advance(info=f"eff {sums['effectiveness_cos']:.3f} util {sums['utility_cos']:.3f}")
    return student, history


@hookimpl
def benchsuite_attacks() -> list[type[Attack]]:
    return [BadEncoder]
