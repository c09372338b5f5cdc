"""The DECREE detector: draw the shadow set, invert the trigger, judge the encoder by the trigger's PL1 norm."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchsuite.api import Verdict
from benchsuite.api.context import IMAGENET_MEAN, IMAGENET_STD
from benchsuite.core.errors import BenchError
from benchsuite.decree.config import DecreeConfig, validate
from benchsuite.decree.inversion import Inversion, invert_trigger, triggered_self_similarity
from benchsuite.eval.trigger_codec import encode_trigger
from benchsuite.ssl.augment import AugmentConfig


def shadow_indices(n: int, labels: np.ndarray | None, count: int, seed: int) -> np.ndarray:
    """``count`` distinct indices of ``n`` images (all of them when ``count >= n``), sorted, drawn with the seed.

    With labels the draw is stratified: each class gives its share of ``count`` (largest remainders, ties to the
    smaller class), as the code takes the first 10 % of every CIFAR-10 test class; without, a uniform draw.
    """
    if count >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, 83])
    if labels is None:
        return np.sort(rng.choice(n, size=count, replace=False))
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / n
    quota = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - quota), kind="stable")[:count - int(quota.sum())]
    quota[extra] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def detect(encoder: nn.Module, images: np.ndarray, labels: np.ndarray | None, cfg: DecreeConfig, seed: int,
           device: torch.device, workdir: Path | None = None, mean: tuple[float, ...] = IMAGENET_MEAN,
           std: tuple[float, ...] = IMAGENET_STD) -> Verdict:
    """Judge ``encoder`` with the defender's clean ``images`` (uint8 (N, H, W, 3)) and their ``labels`` (for a
    class-balanced draw; None: uniform); the picture goes to ``workdir``. ``mean`` / ``std``: the normalisation
    the encoder was trained with."""
    validate(cfg)
    start = time.perf_counter()
    if len(images) < 2:
        raise BenchError(f"decree: {len(images)} defender image(s): the self-similarity needs at least 2; give the "
                         "detector more training images")
    idx = shadow_indices(len(images), labels, cfg.shadow_images, seed)
    encoder.to(device)
    shadow = torch.from_numpy(np.ascontiguousarray(images[idx])).to(device)
    norm = AugmentConfig(mean=tuple(mean), std=tuple(std))
    inv = invert_trigger(encoder, shadow, cfg, seed, norm=norm)
    # the best trigger on every shadow image at once (it was valid on one batch), and no trigger: an encoder whose
    # clean embeddings are already alike (collapsed, barely trained) needs only a small push to pass tau
    overall = triggered_self_similarity(encoder, shadow, inv.mask, inv.pattern, norm=norm)
    untriggered = triggered_self_similarity(encoder, shadow, np.zeros_like(inv.mask), inv.pattern, norm=norm)
    trojaned = inv.valid and inv.pl1 < cfg.threshold
    extras = {"pl1": round(inv.pl1, 6), "l1": round(inv.l1, 3) if inv.valid else None, "valid": inv.valid,
              "shadow": len(idx), "epochs": inv.epochs, "steps": inv.steps, "stopped_early": inv.stopped_early,
              "lambda": inv.lam, "history": {k: [round(v, 6) for v in vs] for k, vs in inv.history.items()},
              "trigger": encode_trigger(inv.mask, inv.pattern), "seconds": round(time.perf_counter() - start, 1),
              # per-encoder results columns (the protocol adds them, clean_* for the clean encoder)
              "columns": {"inversion_valid": inv.valid, "inversion_epochs": inv.epochs,
                          "inversion_self_sim": round(inv.self_similarity, 6),
                          "inversion_self_sim_all": round(overall, 6), "shadow_self_sim": round(untriggered, 6)}}
    if not inv.valid:
        extras["warnings"] = [f"no trigger made the embeddings collapse (self-similarity > tau = {cfg.tau}) in "
                              f"{inv.epochs} epochs: PL1 is 1 (the whole image); raise defense.decree.max_epochs "
                              "(code: 1000) to find the clean encoder's large trigger"]
    if workdir is not None:
        plot_inversion(Path(workdir) / "inversion.png", inv, cfg, trojaned)
    return Verdict(bool(trojaned), float(inv.pl1), float(cfg.threshold), None, extras)


def plot_inversion(path: Path, inv: Inversion, cfg: DecreeConfig, trojaned: bool) -> None:
    """The inverted trigger (m * p on grey, and m) and the per-epoch self-similarity, mask share and lambda."""
    from matplotlib.figure import Figure  # only when a picture is drawn

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(9, 2.8))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 2.2]})
    blended = (inv.mask[..., None] * inv.pattern.transpose(1, 2, 0) + (1 - inv.mask[..., None]) * 0.5).clip(0, 1)
    for ax, image, title in ((axes[0], blended, "m * p on grey"), (axes[1], inv.mask, "mask m")):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    epochs = np.arange(1, len(inv.history["self_sim"]) + 1)
    curves = axes[2]
    curves.plot(epochs, inv.history["self_sim"], label="self-similarity (epoch mean)")
    curves.plot(epochs, np.asarray(inv.history["l1"]) / inv.mask.size / 3, label="mask share (epoch mean)")
    curves.axhline(cfg.tau, color="grey", ls=":", lw=1, label=f"tau {cfg.tau}")
    curves.set(xlabel="epoch", ylim=(-0.05, 1.05))
    lam = curves.twinx()
    lam.semilogy(epochs, inv.history["lambda"], color="crimson", lw=0.8, alpha=0.6)
    lam.set_ylabel("lambda", color="crimson", fontsize=8)
    curves.legend(fontsize=6, loc="center right")
    verdict = "trojaned" if trojaned else "benign"
    fig.suptitle(f"DECREE: PL1 {inv.pl1:.3f} (threshold {cfg.threshold}): {verdict}"
                 + ("" if inv.valid else ", no valid trigger"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
