"""The built-in backbones plugin: ResNets and ViTs by name (``ssl.backbone``)."""

from __future__ import annotations

from torch import nn

from benchsuite.api.hookspecs import hookimpl
from benchsuite.core.errors import BenchError
from benchsuite.core.typed import Sized
from benchsuite.nets.backbones import RESNET_LAYERS, VIT_SIZES, small_resnet, timm_backbone, vit_patch_size


def _resnet(depth: int):
    def factory(image_size: int, width: Sized = 64, stem_stride: Sized = 1, stem: str = "cifar") -> nn.Module:
        return small_resnet(image_size, depth, width, stem_stride, stem)

    factory.__doc__ = f"ResNet-{depth} (timm); options: width, stem (cifar|imagenet), stem_stride"
    return factory


def _vit(size: str):
    def factory(image_size: int, width: Sized = VIT_SIZES[size], depth: Sized = 12, heads: Sized | None = None,
                patch_size: Sized | None = None, **options) -> nn.Module:
        heads = heads or max(h for h in range(1, max(1, width // 64) + 1) if width % h == 0)
        if width % heads:
            raise BenchError(f"vit_{size}: width {width} is not divisible by heads {heads}: set "
                             "ssl.backbone_options.heads to a divisor of the width")
        return timm_backbone(f"vit_{size}_patch16_224", image_size, embed_dim=width, depth=depth, num_heads=heads,
                             patch_size=patch_size or vit_patch_size(image_size), **options)

    factory.__doc__ = (f"ViT-{size.capitalize()} (timm); options: width (embedding), depth, heads, patch_size "
                       "(default 16, smaller for 8+ patches a side)")
    return factory


@hookimpl
def benchsuite_backbones() -> dict[str, object]:
    return {**{f"resnet{d}": _resnet(d) for d in RESNET_LAYERS}, **{f"vit_{s}": _vit(s) for s in VIT_SIZES}}
