"""``bench doctor --gpu-check``: every CUDA path of the suite once, at small sizes, and a tiny cell on CUDA vs CPU.

Each check is a function of the device (and a few shared tiny inputs), so the same checks run on the
CPU in the tests (``--device cpu``). The report lands in ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchsuite.core.console import console

IMAGE_SIZE = 32
TINY_SSL = {  # small heads: a step takes milliseconds
    "simclr": {"proj_hidden": 32, "proj_dim": 16},
    "moco_v2": {"proj_hidden": 32, "proj_dim": 16, "queue_size": 256},
    "byol": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
    "moco_v3": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
}
# the tiny CUDA-vs-CPU cell: the smoke preset, shrunk; three seeds give each device a mean and a spread
# (measured on 2 busy CPU cores: clean ACC 25 % against 10 % chance, patched ASR 62 %, 95 s a seed)
CELL_OVERRIDES = ("dataset.options.train_per_class=200", "dataset.options.val_per_class=50", "train.epochs=5",
                  "train.batch_size=128", "ssl.backbone_options.width=16", "probe.seeds=[1,2]",
                  "probe.label_fraction=0.5", "grid.reference=false", "grid.seeds=[0,1,2]")
AGREEMENT_FLOOR = 5.0  # percentage points always allowed between the devices' means (bf16, cuDNN, faiss GPU)


@dataclass
class CheckResult:
    name: str
    status: str  # ok | failed | skipped
    seconds: float
    detail: str


class Inputs:
    """The tiny shared inputs: generated images, a random CNN and ViT encoder, their features and clusters."""

    def __init__(self, device: torch.device, workdir: Path) -> None:
        from benchsuite.data.synthetic import make_synthetic
        from benchsuite.settings.registry import get_registry

        self.device, self.workdir, self.registry = device, workdir, get_registry()
        self.images = make_synthetic(8, 2, IMAGE_SIZE, seed=0).train.images  # 80 images
        torch.manual_seed(0)
        self.cnn = self.registry.get("backbone", "resnet18")(IMAGE_SIZE, width=8, stem_stride=2)
        self.vit = self.registry.get("backbone", "vit_tiny")(IMAGE_SIZE, width=32, depth=2)
        self._clusters: dict[str, object] = {}

    def method(self, name: str, backbone: str = "cnn"):
        from benchsuite.api import config_from_options

        torch.manual_seed(0)
        net = (self.registry.get("backbone", "resnet18")(IMAGE_SIZE, width=8, stem_stride=2) if backbone == "cnn"
               else self.registry.get("backbone", "vit_tiny")(IMAGE_SIZE, width=32, depth=2))
        cls = self.registry.get("ssl", name)
        return cls(net, config_from_options(cls.Config, TINY_SSL.get(name, {}), name))

    def runner(self, which: str = "cnn"):
        from benchsuite.poison_search.encoding import EncoderRunner

        return EncoderRunner(self.cnn if which == "cnn" else self.vit, self.device, batch_size=64)

    def clusters(self, which: str = "cnn"):
        from benchsuite.core.clustering import kmeans
        from benchsuite.eval.features import extract_features

        if which not in self._clusters:
            encoder = self.cnn if which == "cnn" else self.vit
            self._clusters[which] = kmeans(extract_features(encoder, self.images, device=self.device), 4, seed=0)
        return self._clusters[which]


def _finite(x: np.ndarray | torch.Tensor, what: str) -> None:
    array = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if not np.isfinite(array).all():
        raise AssertionError(f"{what} holds NaN or inf")


def ssl_step(name: str, icutmix: bool = False, backbone: str = "cnn") -> Callable[[Inputs], str]:
    """Two training steps of SSL method ``name`` through the trainer (bf16 autocast + channels_last on CUDA)."""

    def check(inp: Inputs) -> str:
        from benchsuite.settings.registry import get_registry
        from benchsuite.ssl.trainer import TrainConfig, loss_history, pretrain

        method = inp.method(name, backbone)
        if icutmix:
            if not method.supports_mixing():
                raise _Skip(f"{name} defines no mixed loss")
            method = get_registry().get("defense", "icutmix")().wrap_method(method)  # the plugin, by name
        workdir = inp.workdir / f"ssl-{name}-{backbone}-{int(icutmix)}"
        pretrain(method, inp.images[:16], TrainConfig(epochs=1, batch_size=8, lr=0.05), seed=0, workdir=workdir,
                 device=inp.device, label=f"gpu-check {name}")
        losses = loss_history(workdir)
        _finite(np.asarray(losses), "the loss")
        return f"loss {losses[-1]:.3f}" + (", bf16 autocast, channels_last" if inp.device.type == "cuda" else "")

    return check


def features(inp: Inputs) -> str:
    from benchsuite.eval.features import extract_features

    feats = extract_features(inp.cnn, inp.images, device=inp.device)
    _finite(feats, "the features")
    assert feats.shape[0] == len(inp.images) and feats.dtype == np.float32, feats.shape
    return f"{feats.shape[0]} x {feats.shape[1]} float32"


def faiss_kmeans(inp: Inputs) -> str:
    from benchsuite.core.clustering import faiss_gpu_available, kmeans

    feats = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    clusters = kmeans(feats, 8, seed=0)
    assert clusters.assignments.shape == (256,) and np.isfinite(clusters.distances).all()
    if faiss_gpu_available():
        return "faiss GPU k-means"
    return "CPU fallback: this faiss has no GPU support or sees no GPU (pip install faiss-gpu-cu12 for GPU k-means)"


def poisoncam_masking(inp: Inputs) -> str:
    from benchsuite.poison_search.masking import MaskingLocator

    clusters = inp.clusters("cnn")
    located = MaskingLocator(8, seed=0).locate(inp.runner("cnn"), inp.images[:8], clusters,
                                               clusters.assignments[:8], window=8)
    _finite(located.maps, "the attention maps")
    assert located.windows.shape == (8, 4), located.windows.shape
    return "8 images x 8 masks"


def gradcam(which: str) -> Callable[[Inputs], str]:
    def check(inp: Inputs) -> str:
        from benchsuite.poison_search.gradcam import GradCamLocator

        clusters = inp.clusters(which)
        locator = GradCamLocator("auto")
        located = locator.locate(inp.runner(which), inp.images[:8], clusters, clusters.assignments[:8], window=8)
        _finite(located.maps, "the Grad-CAM maps")
        assert located.windows.shape == (8, 4), located.windows.shape
        layer = locator.target(inp.runner(which).encoder, (IMAGE_SIZE, IMAGE_SIZE))
        return f"layer {layer.label}, {layer.size[0]}x{layer.size[1]} map" + \
            (", bf16 autocast" if inp.device.type == "cuda" else "")

    return check


def flip_test(inp: Inputs) -> str:
    from benchsuite.poison_search.flip import FlipTest, flip_set

    clusters = inp.clusters("cnn")
    indices = flip_set(clusters, 4, np.random.default_rng(0))
    scores = FlipTest(inp.runner("cnn"), inp.images, clusters, indices).score(
        inp.images[:6, :8, :8], clusters.assignments[:6])
    _finite(scores, "the flip scores")
    return f"6 patches x {len(indices)} flip images"


def poison_classifier(inp: Inputs) -> str:
    from benchsuite.poison_search.classifier import ClassifierConfig, train_poison_classifier
    from benchsuite.poison_search.search import SearchResult
    from benchsuite.ssl.augment import AugmentConfig

    n = len(inp.images)
    rng = np.random.default_rng(0)
    scores = np.full(n, -np.inf)
    scores[:40] = rng.standard_normal(40)
    windows = np.full((n, 4), -1, dtype=np.int64)
    windows[:40] = [0, 0, 8, 8]
    result = SearchResult(scores, windows, 8, 1, np.arange(4))
    cfg = ClassifierConfig(4, 0.1, 1, 8, 2, 16, 0.01, 0.9, 1e-4, 2, 2, 10, 0.5, (0.2, 0.5), 0.05,
                           AugmentConfig(blur_prob=0.0))
    out = train_poison_classifier(inp.images, result, cfg, seed=0, device=inp.device)
    _finite(out.probability, "the classifier's probabilities")
    assert out.remove.shape == (n,)
    return f"{out.iterations[0]} iterations, {int(out.remove.sum())} of {n} flagged"


def sslcleanse_inversion(inp: Inputs) -> str:
    from benchsuite.ssl.augment import to_float
    from benchsuite.sslcleanse.config import SSLCleanseConfig
    from benchsuite.sslcleanse.inversion import invert_triggers

    images = inp.images[:24]
    x = to_float(torch.from_numpy(images)).to(inp.device)
    encoder = inp.cnn.to(inp.device).eval()
    with torch.no_grad():
        reps = encoder(x)
    cfg = SSLCleanseConfig(clusters=3, epochs=2, batch_size=4, inversion_images=8, knn_sample_num=4)
    inv = invert_triggers(encoder, x, reps, np.arange(len(images)) % 3, cfg, seed=0, label="gpu-check inversion")
    _finite(inv.norms, "the trigger norms")
    return f"3 clusters, norms {', '.join(f'{v:.2f}' for v in inv.norms)}"


def decree_inversion(inp: Inputs) -> str:
    from benchsuite.decree.config import DecreeConfig
    from benchsuite.decree.inversion import invert_trigger, triggered_self_similarity

    shadow = torch.from_numpy(inp.images[:16]).to(inp.device)
    encoder = inp.cnn.to(inp.device).eval()
    inv = invert_trigger(encoder, shadow, DecreeConfig(batch_size=8, max_epochs=1), seed=0,
                         label="gpu-check DECREE inversion")
    everything = triggered_self_similarity(encoder, shadow, inv.mask, inv.pattern)
    _finite(np.array([inv.history["self_sim"][-1], inv.history["l1"][-1], everything]), "the self-similarity and L1")
    return f"{inv.steps} steps, last self-similarity {inv.history['self_sim'][-1]:.3f}, mask share " \
           f"{inv.history['l1'][-1] / inv.mask.size / 3:.3f}"


def torchrun_step(inp: Inputs) -> str:
    """One torchrun process (NCCL on CUDA, gloo on CPU): collectives on the device and a trainer step."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "benchsuite.tools.gpu_check", "--torchrun-worker", str(inp.device)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("torchrun-worker:")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssertionError(f"torchrun exited {done.returncode}: {tail}")
    return lines[-1].removeprefix("torchrun-worker:").strip()


def _torchrun_worker(device_name: str) -> None:
    import torch.distributed as dist

    from benchsuite.ssl.trainer import TrainConfig, pretrain

    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        t = torch.full((4,), 2.0, device=device)
        dist.all_reduce(t)
        dist.broadcast(t, src=0)
        dist.barrier()
        assert torch.equal(t.cpu(), torch.full((4,), 2.0 * dist.get_world_size())), t
        with tempfile.TemporaryDirectory() as tmp:
            inp = Inputs(device, Path(tmp))
            pretrain(inp.method("simclr"), inp.images[:16], TrainConfig(epochs=1, batch_size=8, lr=0.05), seed=0,
                     workdir=Path(tmp) / "ssl", device=device, label="torchrun step")
        print(f"torchrun-worker: {backend}, world {dist.get_world_size()}, all_reduce + broadcast + trainer step",
              flush=True)
    finally:
        dist.destroy_process_group()


def _cell_metrics(device: str, out: Path) -> dict[str, list[float]]:
    from benchsuite.core.console import set_log_file
    from benchsuite.engine.grid import GridRunner
    from benchsuite.settings.config import apply_override, build_config, read_preset
    from benchsuite.settings.registry import get_registry

    data = read_preset("smoke")
    for item in CELL_OVERRIDES:
        apply_override(data, item)
    data["device"] = device
    try:
        results = GridRunner(build_config(data), get_registry(), out).run()
    finally:
        set_log_file(None)  # the run's log lies in a temporary folder
    rows = results[results["defense"] == "none"].sort_values("seed")
    return {k: [float(v) for v in rows[k]] for k in ("clean_acc", "patched_asr")}


def agree(a: list[float], b: list[float], floor: float = AGREEMENT_FLOOR) -> tuple[bool, float, float]:
    """Whether two devices' per-seed values agree statistically: |mean difference| within 3 standard errors of
    the difference plus ``floor`` points. Returns (agree, difference, allowed)."""
    diff = float(np.mean(a) - np.mean(b))
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)) if min(len(a), len(b)) > 1 else 0.0
    allowed = 3 * se + floor
    return abs(diff) <= allowed, diff, allowed


def cuda_vs_cpu(inp: Inputs) -> str:
    if inp.device.type != "cuda":
        raise _Skip("compares CUDA with CPU: needs CUDA")
    gpu = _cell_metrics(str(inp.device), inp.workdir / "cell-cuda")
    cpu = _cell_metrics("cpu", inp.workdir / "cell-cpu")
    parts, ok = [], True
    for metric in gpu:
        good, diff, allowed = agree(gpu[metric], cpu[metric])
        ok &= good
        parts.append(f"{metric} CUDA {np.mean(gpu[metric]):.1f} vs CPU {np.mean(cpu[metric]):.1f} "
                     f"(diff {diff:+.1f}, allowed {allowed:.1f})")
    parts.append("3 seeds each; chance accuracy 10 %")
    if not ok:
        raise AssertionError("; ".join(parts))
    return "; ".join(parts)


class _Skip(Exception):
    """A check that does not apply on this device."""


def checks() -> dict[str, Callable[[Inputs], str]]:
    """Every check by name, in the order they run."""
    from benchsuite.settings.registry import get_registry

    found: dict[str, Callable[[Inputs], str]] = {}
    for name in get_registry().names("ssl"):
        found[f"ssl step: {name}"] = ssl_step(name)
        found[f"ssl step: {name} + i-CutMix"] = ssl_step(name, icutmix=True)
    found["ssl step: moco_v3 (ViT)"] = ssl_step("moco_v3", backbone="vit")
    found.update({"feature extraction": features, "faiss k-means": faiss_kmeans,
                  "PoisonCAM masked scoring": poisoncam_masking, "Grad-CAM (CNN)": gradcam("cnn"),
                  "Grad-CAM (ViT)": gradcam("vit"), "flip test": flip_test, "poison classifier": poison_classifier,
                  "SSL-Cleanse inversion": sslcleanse_inversion, "DECREE inversion": decree_inversion,
                  "torchrun step": torchrun_step,
                  "tiny cell, CUDA vs CPU": cuda_vs_cpu})
    return found


def run_checks(device: torch.device, workdir: Path, names: list[str] | None = None) -> list[CheckResult]:
    """Run the named checks (all by default), each caught and timed."""
    inp = Inputs(device, workdir)
    results = []
    for name, check in checks().items():
        if names is not None and name not in names:
            continue
        start = time.perf_counter()
        try:
            status, detail = "ok", check(inp)
        except _Skip as skip:
            status, detail = "skipped", str(skip)
        except Exception as err:  # a check reports its failure; the others still run
            status, detail = "failed", " ".join(f"{type(err).__name__}: {err}".split())
        results.append(CheckResult(name, status, time.perf_counter() - start, detail))
        console.log(f"{status:7s} {name}: {detail}")
    return results


def write_report(results: list[CheckResult], device: torch.device, out: Path) -> tuple[Path, Path]:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    header = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "failed": sum(r.status == "failed" for r in results)}
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    json_path.write_text(json.dumps({**header, "checks": [asdict(r) for r in results]}, indent=2))
    lines = [f"# GPU check: {header['gpu'] or device}", "",
             f"torch {header['torch']}, CUDA {header['cuda']}, {header['date']}", "",
             "| check | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.detail.replace('|', '/')} |" for r in results]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def gpu_check(out: Path, device_name: str | None = None, names: list[str] | None = None) -> int:
    """``bench doctor --gpu-check``: 0 when every check passed (or there is no CUDA to check), else 1."""
    if device_name != "cpu" and not torch.cuda.is_available():
        console.print(f"no CUDA device here (torch {torch.__version__}): nothing for the GPU check to exercise",
                      highlight=False, soft_wrap=True)
        return 0
    device = torch.device(device_name if device_name and device_name != "auto" else "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        results = run_checks(device, Path(tmp), names)
    json_path, md_path = write_report(results, device, out)
    table = Table(title=f"GPU check on {device}", title_justify="left")
    for column in ("check", "status", "seconds", "detail"):
        table.add_column(column)
    colour = {"ok": "green", "failed": "red", "skipped": "yellow"}
    for r in results:
        table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", r.detail)
    Console(width=max(console.width, 140)).print(table)
    console.log(f"report: {json_path} and {md_path}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__" and sys.argv[1:2] == ["--torchrun-worker"]:
    _torchrun_worker(sys.argv[2])
