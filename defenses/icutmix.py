"""i-CutMix (Lee et al., ICLR'21, as a defense in PatchSearch, CVPR'23): paste a box from another
image of the batch into each query view and mix the contrastive targets by the pasted area (spec 6).

A training-time defense: it wraps the SSL method, which then trains on the poisoned set (or, composed
as ``patchsearch+icutmix``, on the images a filter kept). The method supplies the mixed loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchsuite.api import Defense
from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Positive
from benchsuite.ssl.augment import AugmentConfig
from benchsuite.ssl.base import SSLMethod

PASTES = ("image", "black", "noise")


@dataclass(frozen=True)
class ICutMixConfig:
    alpha: Positive = 1.0  # lambda ~ Beta(alpha, alpha) (i-Mix main_pretext.py default; PatchSearch --alpha 1.0)
    # what fills the box; black and noise are PatchSearch Table 8's ablations (CutOut, RandomErase) and
    # train with the image's own target only
    paste: str = "image"
    weighted_loss: bool = True  # False: one-hot target on the image's own key (Table 8 "remove weighted loss")

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise BenchError(f"defense icutmix: alpha = {self.alpha} must be > 0: fix defense.icutmix.alpha")
        if self.paste not in PASTES:
            raise BenchError(f"defense icutmix: paste = {self.paste!r} is unknown: set defense.icutmix.paste to one "
                             f"of {', '.join(PASTES)}")


@dataclass(frozen=True)
class Box:
    """The pasted box (rows y0:y1, columns x0:x1), the drawn lambda and lambda after clipping."""

    y0: int
    y1: int
    x0: int
    x1: int
    drawn: float
    lam: float  # 1 - box area / image area


def draw_box(height: int, width: int, alpha: float, gen: torch.Generator | None, device: torch.device) -> Box:
    """lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda); a box of sides sqrt(1 - lambda) of the
    image's, centred uniformly and clipped to the image; lambda recomputed from the clipped box."""
    # torch has no Beta sampler that takes a generator: seed numpy's from one draw of ``gen``
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=device).item())
    drawn = float(np.random.default_rng(seed).beta(alpha, alpha))
    drawn = max(drawn, 1 - drawn)
    cut = math.sqrt(1 - drawn)
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=gen, device=device).item())
    cx = int(torch.randint(0, width, (1,), generator=gen, device=device).item())
    y0, y1 = min(max(cy - ch // 2, 0), height), min(max(cy + ch // 2, 0), height)
    x0, x1 = min(max(cx - cw // 2, 0), width), min(max(cx + cw // 2, 0), width)
    return Box(y0, y1, x0, x1, drawn, 1 - (y1 - y0) * (x1 - x0) / (height * width))


class ICutMixMethod(SSLMethod):
    """An SSL method trained on i-CutMix views; ``backbone`` and updates are the wrapped method's."""

    name = "icutmix"
    description = "i-CutMix around an SSL method"

    def __init__(self, method: SSLMethod, config: ICutMixConfig) -> None:
        nn.Module.__init__(self)
        self.method = method
        self.config = config
        self.feature_dim = method.feature_dim

    @property
    def backbone(self) -> nn.Module:  # type: ignore[override]
        return self.method.backbone

    def mix(self, view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mixed view, permutation, per-row lambda for the loss) of one view batch."""
        gen, cfg = self.generator, self.config
        n, c, h, w = view.shape
        box = draw_box(h, w, cfg.alpha, gen, view.device)
        perm = torch.randperm(n, generator=gen, device=view.device)
        mixed = view.clone()
        rows, cols = slice(box.y0, box.y1), slice(box.x0, box.x1)
        region = (slice(None), slice(None), rows, cols)
        if cfg.paste == "image":
            mixed[region] = view[perm, :, rows, cols]
        elif cfg.paste == "black":  # black in [0, 1], then normalised as the trainer normalises
            default = AugmentConfig()
            mean = getattr(self.method, "input_mean", default.mean)
            std = getattr(self.method, "input_std", default.std)
            mixed[region] = (-view.new_tensor(mean) / view.new_tensor(std)).view(1, c, 1, 1).to(view.dtype)
        else:
            noise = torch.randn(n, c, box.y1 - box.y0, box.x1 - box.x0, generator=gen, device=view.device)
            mixed[region] = noise.to(view.dtype)
        lam = box.lam if cfg.weighted_loss and cfg.paste == "image" else 1.0
        return mixed, perm, view.new_full((n,), lam, dtype=torch.float32)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        m1, p1, l1 = self.mix(view1)
        m2, p2, l2 = self.mix(view2)
        perm = torch.cat([p1, p2 + len(view1)])
        return self.method.mixed_loss(torch.cat([m1, m2]), torch.cat([view2, view1]), perm, torch.cat([l1, l2]))

    def check_batch(self, batch: int) -> None:
        self.method.check_batch(batch)

    def after_step(self, progress: float) -> None:
        self.method.after_step(progress)


class ICutMix(Defense):
    name = "icutmix"
    kind = "training"
    Config = ICutMixConfig
    description = "i-CutMix: pasted boxes from other images, area-weighted contrastive targets (training-time)"

    def wrap_method(self, method: SSLMethod) -> SSLMethod:
        if not method.supports_mixing():
            raise BenchError(f"i-CutMix needs a mixed loss, which ssl method {method.name} does not define: "
                             "use moco_v3, moco_v2, byol or simclr")
        return ICutMixMethod(method, self.config)


@hookimpl
def benchsuite_defenses() -> list[type[Defense]]:
    return [ICutMix]
