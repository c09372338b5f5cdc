"""Backbones from timm adapted to small images, and what the suite reads of a backbone (features, CAM layers)."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from benchsuite.core.errors import BenchError

RESNET_LAYERS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
VIT_SIZES = {"tiny": 192, "small": 384, "base": 768}  # timm's embedding widths; 64 channels a head


def small_resnet(image_size: int, depth: int = 18, width: int = 64, stem_stride: int = 1,
                 stem: str = "cifar") -> nn.Module:
    """A timm ResNet; ``stem="cifar"`` swaps in a 3x3 first convolution and drops the max-pool.

    ``width`` is the first stage's channels (64 = standard ResNet-18); ``stem_stride`` 2 halves
    the resolution once at the CIFAR stem, about 4x cheaper at a small cost in accuracy at 32 px.
    ``stem="imagenet"`` keeps timm's 7x7/2 convolution and max-pool (224 px recipes).
    """
    if stem not in ("cifar", "imagenet"):
        raise BenchError(f"unknown stem {stem!r}: use cifar or imagenet")
    if depth not in RESNET_LAYERS:
        raise BenchError(f"resnet depth {depth} is not supported: use one of {sorted(RESNET_LAYERS)}")
    model = ResNet(BasicBlock, RESNET_LAYERS[depth], num_classes=0,
                   channels=tuple(width * 2**i for i in range(4)))
    if stem == "imagenet":
        return model
    stem_channels = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, stem_channels, kernel_size=3, stride=stem_stride, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def vit_patch_size(image_size: int, native: int = 16) -> int:
    """A ViT patch for ``image_size``: the native one, shrunk to keep 8 or more patches a side (32 px: 4)."""
    limit = max(1, min(native, image_size // 8))
    return max(p for p in range(1, limit + 1) if image_size % p == 0)


def timm_backbone(name: str, image_size: int, **options) -> nn.Module:
    """Any timm architecture by name, randomly initialised, without classifier head.

    A ViT gets ``img_size`` = the image side and, unless ``patch_size`` is given, a patch small
    enough for 8 patches a side (``vit_small_patch16_224`` at 32 px: patch 4, 64 tokens).
    """
    kwargs = dict(pretrained=False, num_classes=0, **options)
    try:
        model = timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:  # architectures without an img_size argument (CNNs)
        return timm.create_model(name, **kwargs)
    except RuntimeError as err:
        raise BenchError(f"timm cannot build backbone {name!r} ({err}): see `timm.list_models()`") from err
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and "patch_size" not in options and vit_patch_size(image_size, patch[0]) != patch[0]:
        model = timm.create_model(name, img_size=image_size, patch_size=vit_patch_size(image_size, patch[0]), **kwargs)
    return model


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features the backbone returns."""
    dim = getattr(model, "num_features", None)
    if dim is None:
        raise BenchError(f"backbone {type(model).__name__} has no num_features attribute")
    return int(dim)


def spatial_features(model: nn.Module, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """The last feature map before pooling, or with ``layer`` the output of that module, for CAM-style defenses.

    ``layer`` is a module path (``layer3``, ``blocks.11.norm1``); ViT outputs are tokens (B, N, C).
    """
    return feature_maps(model, images, [layer])[0]


def feature_maps(model: nn.Module, images: torch.Tensor, layers: Sequence[str | None]) -> list[torch.Tensor]:
    """Outputs of the modules ``layers`` (None: ``forward_features``' output) in one forward pass."""
    if not hasattr(model, "forward_features"):
        raise BenchError(f"backbone {type(model).__name__} exposes no spatial features")
    found: dict[str, torch.Tensor] = {}
    handles = [find_module(model, name).register_forward_hook(
        lambda _m, _i, out, name=name: found.setdefault(name, out)) for name in layers if name is not None]
    try:
        last = model.forward_features(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name is not None and name not in found]
    if missing:
        raise BenchError(f"module {missing[0]!r} of {type(model).__name__} is not run by forward_features: "
                         f"pick one of {', '.join(cam_stages(model)) or 'its feature stages'}")
    return [last if name is None else found[name] for name in layers]


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at path ``name``, or a one-line error listing the stages."""
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise BenchError(f"cam_layer={name!r}: {type(model).__name__} has no such module; use auto, last or "
                         f"a module path such as {', '.join(cam_stages(model)) or 'layer4'}") from err


def cam_stages(model: nn.Module) -> dict[str, int]:
    """The backbone's stages, shallow to deep, with their channels (timm ``feature_info``); {} if unknown."""
    info = getattr(model, "feature_info", None) or []
    return {str(i["module"]): int(i.get("num_chs", 0)) for i in info if isinstance(i, dict) and "module" in i}


def vit_cam_module(model: nn.Module) -> str | None:
    """``blocks.<last>.norm1`` of a timm ViT (PatchSearch's Grad-CAM target layer), None for other backbones."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or not blocks or not hasattr(model, "num_prefix_tokens"):
        return None
    return f"blocks.{len(blocks) - 1}.norm1" if hasattr(blocks[-1], "norm1") else None
