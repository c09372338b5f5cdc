"""Backbones from timm, adapted to small images."""

from __future__ import annotations

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from benchsuite.errors import BenchError
from benchsuite.hookspecs import hookimpl

RESNET_LAYERS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


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


def timm_backbone(name: str, image_size: int, **options) -> nn.Module:
    """Any timm architecture by name, randomly initialised, without classifier head."""
    kwargs = dict(pretrained=False, num_classes=0, **options)
    try:
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:  # architectures without an img_size argument (CNNs)
        return timm.create_model(name, **kwargs)
    except RuntimeError as err:
        raise BenchError(f"timm cannot build backbone {name!r} ({err}): see `timm.list_models()`") from err


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled features the backbone returns."""
    dim = getattr(model, "num_features", None)
    if dim is None:
        raise BenchError(f"backbone {type(model).__name__} has no num_features attribute")
    return int(dim)


def spatial_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last feature map before pooling, (B, C, h, w), for CAM-style defenses."""
    if not hasattr(model, "forward_features"):
        raise BenchError(f"backbone {type(model).__name__} exposes no spatial features")
    return model.forward_features(images)


def _resnet(depth: int):
    def factory(image_size: int, width: int = 64, stem_stride: int = 1, stem: str = "cifar") -> nn.Module:
        return small_resnet(image_size, depth, width, stem_stride, stem)

    factory.__doc__ = f"ResNet-{depth} (timm); options: width, stem (cifar|imagenet), stem_stride"
    return factory


@hookimpl
def benchsuite_backbones() -> dict[str, object]:
    return {f"resnet{d}": _resnet(d) for d in RESNET_LAYERS}
