"""PatchSearch's locator: Grad-CAM with the k-means cosine classifier (PatchSearch §4, spec 4.3).

The classifier's weights are the cluster centres, its logits the cosine similarity between an
image's pooled feature and each centre; the Grad-CAM target is the image's own cluster.

Target layer (``cam_layer``): a ViT's ``blocks[-1].norm1``, its tokens minus the prefix (CLS)
tokens reshaped to the patch grid (PatchSearch's choice). The pooled feature is computed from
there through attention, so the patch tokens get a gradient whatever the pooling (token, avg,
map). A CNN's ``last`` map is ``forward_features``' output (ResNet ``layer4``, PatchSearch's
choice); ``auto`` takes the deepest stage whose map is at least 4x4 (at 32 px with a stride-2
stem ``layer4`` is 2x2, so a window could only be a quadrant); or any module path.

Own implementation rather than the ``grad-cam`` package: that package backpropagates through the
whole backbone and leaves gradients in the encoder's ``.grad`` (``loss.backward``), moves
activations to numpy and resizes every CAM with OpenCV in a Python loop, and pulls in opencv,
ttach and scikit-learn. Here the encoder runs with detached parameters, the target layer's output
is swapped for a leaf tensor, and ``torch.autograd.grad`` differentiates only what follows that
layer, on the device, for a whole batch at once.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from benchsuite.core.clustering import Clusters
from benchsuite.core.console import note
from benchsuite.core.errors import BenchError
from benchsuite.nets.backbones import cam_stages, feature_maps, find_module, spatial_features, vit_cam_module
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.locators import Located
from benchsuite.poison_search.windows import best_windows

MIN_CAM_SIDE = 4  # cam_layer "auto": the deepest map with at least 4x4 cells (PS at 224 px: layer4, 7x7)


@dataclass(frozen=True)
class CamLayer:
    """Where Grad-CAM reads activations: module ``module``'s output, or ``forward_features``' output (None)."""

    module: str | None
    size: tuple[int, int]  # cells (h, w) of the map
    channels: int | None = None  # the map's channels where the backbone names them (finds NHWC maps)

    @property
    def label(self) -> str:
        return self.module or "forward_features"


def as_grid(encoder: nn.Module, feats: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """A feature map as (B, C, h, w): CNN maps as they are (NHWC permuted), ViT patch tokens reshaped."""
    name = type(encoder).__name__
    if feats.ndim == 4:
        channels = channels or getattr(encoder, "num_features", feats.shape[1])
        if feats.shape[1] != channels and feats.shape[-1] == channels:  # NHWC models (e.g. Swin)
            return feats.permute(0, 3, 1, 2)
        return feats
    if feats.ndim == 3:  # tokens (B, N, C): drop class/register tokens, reshape the patch grid
        tokens = feats[:, int(getattr(encoder, "num_prefix_tokens", 0)):]
        side = math.isqrt(tokens.shape[1])
        if side * side == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], side, side)
    raise BenchError(f"encoder {name} gives no spatial feature map (shape {tuple(feats.shape)}): "
                     "Grad-CAM needs one; use poisoncam, which only needs pooled features")


def pool_head(encoder: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Pooled features from ``forward_features`` output, as the encoder's own forward computes them."""
    if hasattr(encoder, "forward_head"):
        return encoder.forward_head(feats, pre_logits=True)
    return as_grid(encoder, feats).mean((2, 3))


def _device(encoder: nn.Module) -> torch.device:
    tensor = next(encoder.parameters(), None)
    if tensor is None:
        tensor = next(encoder.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def resolve_cam_layer(encoder: nn.Module, layer: str, image_size: tuple[int, int]) -> CamLayer:
    """The target layer for ``cam_layer`` = ``auto`` | ``last`` | a module path, at ``image_size`` (h, w).

    The map sizes come from one forward pass of a blank image.
    """
    if not isinstance(layer, str) or not layer:
        raise BenchError(f"cam_layer={layer!r}: use auto, last or a module path such as layer4")
    stages = cam_stages(encoder)
    vit = vit_cam_module(encoder)
    if layer not in ("auto", "last"):
        find_module(encoder, layer)
        candidates: list[str | None] = [layer]
    else:  # the map before pooling, then the stages deepest first
        candidates = [vit] if vit else [None, *reversed(stages)]
    blank = torch.zeros(1, 3, *image_size, device=_device(encoder))
    was_training = encoder.training
    encoder.eval()
    try:
        maps = feature_maps(encoder, blank, candidates)
    finally:
        encoder.train(was_training)
    found = [CamLayer(name, tuple(as_grid(encoder, out, stages.get(name or "")).shape[-2:]), stages.get(name or ""))
             for name, out in zip(candidates, maps)]
    if len(found) > 1 and maps[0].shape == maps[1].shape:  # the last stage is the map before pooling (ResNet)
        found.pop(0)  # named by its module (layer4) rather than forward_features
    if layer != "auto":
        return found[0]
    wide = [c for c in found if min(c.size) >= MIN_CAM_SIDE]
    return wide[0] if wide else max(found, key=lambda c: c.size[0] * c.size[1])  # max keeps the deepest tie


def _activations_and_pooled(encoder: nn.Module, x: torch.Tensor, module: str,
                            autocast: AbstractContextManager) -> tuple[torch.Tensor, torch.Tensor]:
    """``module``'s output as a leaf and the pooled features computed from it, with a graph from the leaf only."""
    leaves: list[torch.Tensor] = []

    def swap(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        leaves.append(out.detach().requires_grad_(True))
        return leaves[-1]

    handle = find_module(encoder, module).register_forward_hook(swap)
    detached = {name: p.detach() for name, p in encoder.named_parameters()}  # no graph, no .grad on the encoder
    try:
        with torch.enable_grad(), autocast:
            pooled = functional_call(encoder, detached, (x,))
    finally:
        handle.remove()
    if len(leaves) != 1:
        raise BenchError(f"cam_layer={module!r} runs {len(leaves)} times in a forward pass: pick a module that "
                         "runs once, such as a stage of the backbone")
    return leaves[0], pooled


def kmeans_gradcam(encoder: nn.Module, x: torch.Tensor, centres: torch.Tensor, targets: torch.Tensor,
                   autocast: AbstractContextManager | None = None, layer: CamLayer | str = "auto",
                   raw_feature_target: bool = False) -> torch.Tensor:
    """Grad-CAM (n, H, W) in [0, 1] of normalised inputs ``x`` for the cosine k-means classifier.

    ``layer``: a :func:`resolve_cam_layer` result, or a ``cam_layer`` value resolved here.
    ``raw_feature_target``: differentiate each image's largest raw pooled coordinate instead of its
    cluster's cosine (what the official code does on a ViT, compat behaviour 9); ``centres`` and
    ``targets`` are then unused.
    """
    if isinstance(layer, str):
        layer = resolve_cam_layer(encoder, layer, tuple(x.shape[-2:]))
    autocast = autocast or nullcontext()
    if layer.module is None:  # the map before pooling: only the pooling head needs a graph
        with torch.no_grad(), autocast:
            feats = spatial_features(encoder, x)
        acts = feats.detach().float().requires_grad_(True)
        with torch.enable_grad():
            pooled = pool_head(encoder, acts)
    else:
        acts, pooled = _activations_and_pooled(encoder, x, layer.module, autocast)
    pooled = pooled.float()
    if pooled.ndim != 2:
        raise BenchError(f"encoder {type(encoder).__name__} gives shape {tuple(pooled.shape)}, "
                         "expected (B, D): give an encoder with pooled features")
    with torch.enable_grad():
        if raw_feature_target:  # the output is the feature itself; pytorch-grad-cam's default target is its argmax
            logits, targets = pooled, pooled.detach().argmax(1)
        else:
            logits = F.normalize(pooled, dim=1) @ F.normalize(centres.float(), dim=1).T
        (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)
    acts = as_grid(encoder, acts.detach().float(), layer.channels)
    grads = as_grid(encoder, grads.float(), layer.channels)
    weights = grads.mean((2, 3), keepdim=True)  # Grad-CAM: spatial mean of the gradients
    cam = F.relu((weights * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin((1, 2), keepdim=True)
    high = cam.amax((1, 2), keepdim=True)
    return (cam - low) / (high - low + 1e-12)  # per-image min-max, as pytorch-grad-cam


class GradCamLocator:
    """Candidate = the w x w window with the largest Grad-CAM sum (PatchSearch).

    ``layer``: ``auto`` (default; the deepest map of at least 4x4), ``last`` (PatchSearch: ResNet
    ``layer4``, ViT ``blocks[-1].norm1``) or a module path.
    """

    name = "gradcam"

    def __init__(self, layer: str = "auto", compat: str = "paper") -> None:
        self.layer, self.compat = layer, compat
        self._targets: dict[tuple[int, tuple[int, int]], CamLayer] = {}

    def raw_feature_target(self, encoder: nn.Module) -> bool:
        """compat = "code" on a ViT: the official code's CAM never sees the k-means head (behaviour 9)."""
        return self.compat == "code" and vit_cam_module(encoder) is not None

    def target(self, encoder: nn.Module, image_size: tuple[int, int]) -> CamLayer:
        """The resolved layer for ``encoder`` at ``image_size``; logged once per encoder and size."""
        key = (id(encoder), tuple(image_size))
        if key not in self._targets:
            found = resolve_cam_layer(encoder, self.layer, key[1])
            self._targets[key] = found
            note(f"patchsearch Grad-CAM: cam_layer={self.layer} -> {found.label}, "
                 f"{found.size[0]}x{found.size[1]} map at {key[1][0]}x{key[1][1]} px")
        return self._targets[key]

    def locate(self, runner: EncoderRunner, images: np.ndarray, clusters: Clusters,
               assignments: np.ndarray, window: int) -> Located:
        centres = torch.from_numpy(clusters.centres).to(runner.device)
        targets = torch.from_numpy(np.asarray(assignments, dtype=np.int64)).to(runner.device)
        windows, maps = [], []
        for sl in runner.chunks(len(images)):
            x = runner.prepare(runner.unit(images[sl]))
            layer = self.target(runner.encoder, tuple(x.shape[-2:]))
            cam = kmeans_gradcam(runner.encoder, x, centres, targets[sl], runner.autocast(), layer,
                                 raw_feature_target=self.raw_feature_target(runner.encoder))
            windows.append(best_windows(cam, window))
            maps.append(cam.float().cpu().numpy())
        h, w = images.shape[1:3]
        return Located(np.concatenate(windows) if windows else np.zeros((0, 4), np.int64),
                       np.concatenate(maps) if maps else np.zeros((0, h, w), np.float32))
