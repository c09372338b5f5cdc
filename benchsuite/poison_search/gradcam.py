"""PatchSearch's locator: Grad-CAM with the k-means cosine classifier (PatchSearch §4).

The classifier's weights are the cluster centres, its logits the cosine similarity between an
image's pooled feature and each centre; the Grad-CAM target is the image's own cluster.

Own implementation rather than the ``grad-cam`` package: that package can produce batched CAMs
with this head (wrap encoder + cosine head in one module, pass ``ClassifierOutputTarget`` per
image), so no fork is needed, but it backpropagates through the whole backbone and leaves
gradients in the encoder's ``.grad`` (``loss.backward``), moves activations to numpy and resizes
every CAM with OpenCV in a Python loop, needs a hookable target *layer* (a ViT needs a reshape
transform) and pulls in opencv, ttach and scikit-learn. Here the map is the output of timm's
``forward_features``: it is computed without a graph, then only the (tiny) head is differentiated
with ``torch.autograd.grad`` w.r.t. that map, all on the device, for a whole batch at once.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchsuite.backbones import spatial_features
from benchsuite.clustering import Clusters
from benchsuite.errors import BenchError
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.locators import Located
from benchsuite.poison_search.windows import best_windows


def as_grid(encoder: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """``forward_features`` output as a (B, C, h, w) map: CNN maps as they are, ViT patch tokens reshaped."""
    name = type(encoder).__name__
    if feats.ndim == 4:
        channels = getattr(encoder, "num_features", feats.shape[1])
        if feats.shape[1] != channels and feats.shape[-1] == channels:  # NHWC models (e.g. Swin)
            return feats.permute(0, 3, 1, 2)
        return feats
    if feats.ndim == 3:  # tokens (B, N, C): drop class/register tokens, reshape the patch grid
        tokens = feats[:, int(getattr(encoder, "num_prefix_tokens", 0)):]
        side = math.isqrt(tokens.shape[1])
        if side * side == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], side, side)
    raise BenchError(f"encoder {name} gives no spatial feature map (forward_features shape {tuple(feats.shape)}): "
                     "Grad-CAM needs one; use poisoncam, which only needs pooled features")


def pool_head(encoder: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Pooled features from ``forward_features`` output, as the encoder's own forward computes them."""
    if hasattr(encoder, "forward_head"):
        return encoder.forward_head(feats, pre_logits=True)
    return as_grid(encoder, feats).mean((2, 3))


def kmeans_gradcam(encoder: nn.Module, x: torch.Tensor, centres: torch.Tensor, targets: torch.Tensor,
                   autocast=None) -> torch.Tensor:
    """Grad-CAM (n, H, W) in [0, 1] of normalised inputs ``x`` for the cosine k-means classifier."""
    with torch.no_grad(), autocast or nullcontext():
        feats = spatial_features(encoder, x)
    feats = feats.detach().float().requires_grad_(True)
    with torch.enable_grad():
        pooled = pool_head(encoder, feats).float()
        if pooled.ndim != 2:
            raise BenchError(f"encoder {type(encoder).__name__} head gives shape {tuple(pooled.shape)}, "
                             "expected (B, D): give an encoder with pooled features")
        logits = F.normalize(pooled, dim=1) @ F.normalize(centres, dim=1).T
        (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), feats)
    acts, grads = as_grid(encoder, feats.detach()), as_grid(encoder, grads)
    weights = grads.mean((2, 3), keepdim=True)  # Grad-CAM: spatial mean of the gradients
    cam = F.relu((weights * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin((1, 2), keepdim=True)
    high = cam.amax((1, 2), keepdim=True)
    return (cam - low) / (high - low + 1e-12)  # per-image min-max, as pytorch-grad-cam


class GradCamLocator:
    """Candidate = the w x w window with the largest Grad-CAM sum (PatchSearch)."""

    name = "gradcam"

    def locate(self, runner: EncoderRunner, images: np.ndarray, clusters: Clusters,
               assignments: np.ndarray, window: int) -> Located:
        centres = torch.from_numpy(clusters.centres).to(runner.device)
        targets = torch.from_numpy(np.asarray(assignments, dtype=np.int64)).to(runner.device)
        windows, maps = [], []
        for sl in runner.chunks(len(images)):
            x = runner.prepare(runner.unit(images[sl]))
            cam = kmeans_gradcam(runner.encoder, x, centres, targets[sl], runner.autocast())
            windows.append(best_windows(cam, window))
            maps.append(cam.float().cpu().numpy())
        h, w = images.shape[1:3]
        return Located(np.concatenate(windows) if windows else np.zeros((0, 4), np.int64),
                       np.concatenate(maps) if maps else np.zeros((0, h, w), np.float32))
