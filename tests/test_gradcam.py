"""PatchSearch's Grad-CAM: the target layer (ViT ``blocks[-1].norm1``, CNN stage by ``cam_layer``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from benchsuite.api import DefenseContext
from benchsuite.core.clustering import kmeans
from benchsuite.core.console import LOG_ENV
from benchsuite.core.errors import BenchError
from benchsuite.defenses.patchsearch import PatchSearch, PatchSearchConfig
from benchsuite.eval.features import extract_features
from benchsuite.nets.builtin import benchsuite_backbones
from benchsuite.poison_search import EncoderRunner, GradCamLocator, box_iou
from benchsuite.poison_search.gradcam import kmeans_gradcam, resolve_cam_layer
from benchsuite.ssl.augment import AugmentConfig, normalize, to_float
from tests.fixtures_planted import PlantedEncoder, planted_data, planted_encoder, single_thread

WINDOW = 10  # the planted trigger is 10 px at 32 px


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


class TriggerPatches(nn.Module):
    """A 4 px patch embedding: random texture channels and, last, the planted trigger detector.

    The detector's response is spread over the trigger's box, so a patch's value is how much of it
    lies on the trigger.
    """

    def __init__(self, trigger: np.ndarray, width: int, gain: float) -> None:
        super().__init__()
        self.planted = PlantedEncoder(trigger, gain=gain, stride=4, channels=width - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planted, side = self.planted, self.planted.side
        content = F.relu(F.conv2d(x, planted.filters, padding=1))
        found = planted.gain * F.relu(planted.trigger_map(x) - planted.threshold)
        found = F.max_pool2d(F.pad(found, (side // 2 - 1, side // 2) * 2), side, stride=1)
        return F.avg_pool2d(torch.cat([content, found], 1), 4)


def planted_vit(trigger: np.ndarray, pool: str, width: int = 16, gain: float = 500.0,
                focus: float = 32.0) -> VisionTransformer:
    """A one-block timm ViT (32 px, patch 4, a CLS token) whose patch tokens carry the trigger detector.

    In the block every query attends to the keys in proportion to exp(``focus`` x their normalised
    trigger channel) and takes their normalised tokens (v = proj = identity); the MLP is off. So
    the trigger reaches the pooled feature (CLS token, mean, or attention pooling, made a mean here)
    through attention from the patch tokens at ``blocks[-1].norm1``.
    """
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=width, depth=1, num_heads=2, num_classes=0,
                            global_pool=pool, class_token=True)
    vit.patch_embed.proj = TriggerPatches(trigger, width, gain)
    eye, zero = torch.eye(width), torch.zeros(width, width)
    with torch.no_grad():
        vit.pos_embed.zero_()
        vit.cls_token.zero_()
        attn = vit.blocks[0].attn
        attn.qkv.weight.copy_(torch.cat([zero, eye, eye]))
        attn.qkv.bias.zero_()
        attn.qkv.bias[width - 1] = focus  # the query of every token asks for the trigger
        attn.proj.weight.copy_(eye)
        attn.proj.bias.zero_()
        vit.blocks[0].mlp.fc2.weight.zero_()
        vit.blocks[0].mlp.fc2.bias.zero_()
        if vit.attn_pool is not None:  # "map": a uniform attention pool of the tokens
            pool_ = vit.attn_pool
            pool_.q.weight.zero_()
            pool_.q.bias.zero_()
            pool_.kv.weight.copy_(torch.cat([zero, eye]))
            pool_.kv.bias.zero_()
            pool_.proj.weight.copy_(eye)
            pool_.proj.bias.zero_()
            pool_.mlp.fc2.weight.zero_()
            pool_.mlp.fc2.bias.zero_()
    return vit.eval()


@pytest.mark.parametrize("pool", ["token", "avg", "map"])
def test_vit_gradcam_finds_the_trigger_for_every_pooling(pool):
    p = planted_data()
    vit = planted_vit(p.trigger, pool)
    clusters = kmeans(extract_features(vit, p.images), 20, seed=0)
    idx = p.poisoning.poison_indices
    located = GradCamLocator().locate(EncoderRunner(vit, "cpu", 512), p.images[idx], clusters,
                                      clusters.assignments[idx], WINDOW)
    spread = np.ptp(located.maps.reshape(len(idx), -1), 1)
    assert (spread > 0).all(), "a constant CAM"
    iou = box_iou(located.windows, p.poisoning.boxes[idx])
    assert (iou >= 0.5).mean() >= 0.6, f"{pool}: IoU >= 0.5 for only {(iou >= 0.5).mean():.0%} of the poisons"
    assert all(param.grad is None for param in vit.parameters())


def test_vit_target_is_the_last_blocks_norm1():
    vit = planted_vit(planted_data().trigger, "token")
    for layer in ("auto", "last"):
        target = resolve_cam_layer(vit, layer, (32, 32))
        assert target.module == "blocks.0.norm1" and target.size == (8, 8)


def smoke_resnet() -> nn.Module:
    """The smoke / small-cpu backbone (ResNet-18, stride-2 CIFAR stem), narrower for speed."""
    return benchsuite_backbones()["resnet18"](32, width=8, stem_stride=2).eval()


def test_cnn_auto_takes_the_last_stage_of_at_least_4x4():
    resnet = smoke_resnet()
    auto = resolve_cam_layer(resnet, "auto", (32, 32))
    assert auto.module == "layer3" and auto.size == (4, 4)
    last = resolve_cam_layer(resnet, "last", (32, 32))
    assert last.module == "layer4" and last.size == (2, 2)  # PatchSearch's target layer
    assert resolve_cam_layer(resnet, "layer2", (32, 32)).size == (8, 8)
    with pytest.raises(BenchError, match="cam_layer='layer9'.*layer3"):
        resolve_cam_layer(resnet, "layer9", (32, 32))


def textbook_gradcam(model: nn.Module, x: torch.Tensor, centres: torch.Tensor, targets: torch.Tensor,
                     layer: str) -> torch.Tensor:
    """Grad-CAM with a graph through the whole model, the gradient taken at ``layer``'s output."""
    saved = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: saved.setdefault("a", out))
    pooled = model(x)
    handle.remove()
    logits = F.normalize(pooled, dim=1) @ F.normalize(centres, dim=1).T
    (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), saved["a"])
    acts = saved["a"]
    if acts.ndim == 3:  # ViT tokens minus CLS on the 8 x 8 patch grid
        acts, grads = (t[:, 1:].transpose(1, 2).reshape(len(x), -1, 8, 8) for t in (acts, grads))
    cam = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low, high = cam.amin((1, 2), keepdim=True), cam.amax((1, 2), keepdim=True)
    return (cam - low) / (high - low + 1e-12)


@pytest.mark.parametrize(("model", "cam_layer"), [("resnet", "auto"), ("resnet", "last"), ("vit", "auto")])
def test_gradcam_equals_textbook_gradcam(model, cam_layer):
    """Only what follows the layer is differentiated, yet the CAM is the full-graph one; no .grad is left."""
    p = planted_data()
    encoder = smoke_resnet() if model == "resnet" else planted_vit(p.trigger, "token")
    images = p.images[p.poisoning.poison_indices[:4]]
    runner = EncoderRunner(encoder, "cpu")
    x = runner.prepare(runner.unit(images))
    centres = torch.randn(3, encoder.num_features, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 0])
    layer = resolve_cam_layer(encoder, cam_layer, (32, 32))
    cam = kmeans_gradcam(encoder, x, centres, targets, layer=layer)
    assert all(param.grad is None for param in encoder.parameters())
    expected = textbook_gradcam(encoder, x, centres, targets, layer.module)
    assert expected.amax() > 0 and torch.allclose(cam, expected, atol=1e-4)


def test_the_map_size_is_logged_once(tmp_path, monkeypatch):
    monkeypatch.setenv(LOG_ENV, str(tmp_path / "run.log"))
    locator, resnet = GradCamLocator("auto"), smoke_resnet()
    for _ in range(2):
        assert locator.target(resnet, (32, 32)).module == "layer3"
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert len(lines) == 1 and "layer3, 4x4 map at 32x32 px" in lines[0]


def test_patchsearch_refuses_an_unknown_cam_layer_before_searching(tmp_path):
    images = planted_data().images[:60]
    ctx = DefenseContext(images, smoke_resnet(), None, 10, 0, torch.device("cpu"), tmp_path)
    with pytest.raises(BenchError, match="cam_layer='layer9'") as err:
        PatchSearch(PatchSearchConfig(cam_layer="layer9")).detect(ctx)
    assert "\n" not in str(err.value)


def test_official_code_mode_on_a_vit_differentiates_the_largest_raw_feature():
    """compat = "code" on a ViT (the official search's k-means head is never called): the CAM of each image
    follows its largest raw CLS coordinate, whatever the clusters; ResNets keep the cluster's cosine."""
    p = planted_data()
    vit = planted_vit(p.trigger, "token")
    x = normalize(to_float(torch.from_numpy(p.images[:6])), AugmentConfig())
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, vit.num_features, generator=gen)
    raw = kmeans_gradcam(vit, x, centres, torch.zeros(6, dtype=torch.int64), raw_feature_target=True)
    other = kmeans_gradcam(vit, x, torch.randn(7, vit.num_features, generator=gen), torch.full((6,), 6),
                           raw_feature_target=True)
    torch.testing.assert_close(raw, other)  # the clusters do not reach it
    assert not torch.allclose(raw, kmeans_gradcam(vit, x, centres, torch.zeros(6, dtype=torch.int64)))
    assert GradCamLocator(compat="code").raw_feature_target(vit)
    assert not GradCamLocator(compat="paper").raw_feature_target(vit)
    assert not GradCamLocator(compat="code").raw_feature_target(planted_encoder(p))
