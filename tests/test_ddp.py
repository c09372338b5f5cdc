"""Pretraining under torchrun: 2 gloo processes on CPU train exactly as one process on the same global batch.

The ranks are spawned with the environment torchrun gives them and join through the same
``distributed.setup`` as ``bench run``. BatchNorm is synchronised over the ranks (torch's
SyncBatchNorm refuses CPU tensors, so CPU ranks use ``GatheredBatchNorm``), so the statistics are
those of the full batch and the two runs agree to float rounding.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from benchsuite.core import distributed
from benchsuite.core.cache import StageCache
from benchsuite.data.synthetic import make_synthetic
from benchsuite.defenses.icutmix import ICutMix
from benchsuite.settings.registry import get_registry
from benchsuite.ssl.trainer import TrainConfig, loss_history, pretrain
from tests.test_ssl_methods import build

WORLD = 2
CFG = TrainConfig(epochs=2, batch_size=8, lr=0.5)  # 2 steps an epoch; lr x 8/256 (higher: the ViT run turns chaotic)
CASES = [(name, "resnet18") for name in get_registry().names("ssl")] + [("moco_v3", "vit_tiny")]


def _images():
    return make_synthetic(num_train_per_class=2, num_val_per_class=1, image_size=32, seed=0).train.images[:16]


def _train(name: str, backbone: str, workdir: Path, icutmix: bool = False):
    method = build(name, backbone)
    if icutmix:
        method = ICutMix().wrap_method(method)
    return pretrain(method, _images(), CFG, seed=0, workdir=workdir)


def _stages(out: Path, rank: int) -> dict:
    """Rank 0 computes a stage alone and the others read it; pretraining is computed by every rank."""
    cache, log = StageCache(out / "cache"), []

    def compute_probe() -> str:
        log.append(("probe", distributed.world_size()))
        (cache.dir("probe", "k") / "value.txt").write_text(f"rank {rank}")
        cache.mark_done("probe", "k")
        return f"rank {rank}"

    def compute_pretrain() -> int:
        log.append(("pretrain", distributed.world_size()))
        cache.mark_done("pretrain", "k")
        return rank

    value = cache.run("probe", "k", lambda: (cache.dir("probe", "k") / "value.txt").read_text(), compute_probe)
    first = cache.run("pretrain", "k", lambda: -1, compute_pretrain)
    again = cache.run("pretrain", "k", lambda: -1, compute_pretrain)
    return {"value": value, "log": log, "first": first, "again": again}


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    out_dir = Path(out)
    states = {f"{name}-{backbone}": _train(name, backbone, out_dir / f"{name}-{backbone}").state_dict()
              for name, backbone in CASES}
    states["icutmix"] = _train("moco_v3", "resnet18", out_dir / "icutmix", icutmix=True).state_dict()
    torch.save(states, out_dir / f"rank{rank}.pt")
    (out_dir / f"stages{rank}.json").write_text(json.dumps(_stages(out_dir, rank)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    ranks = mp.spawn(_rank_main, args=(_free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 600
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the gloo ranks did not finish in 10 minutes (a collective waits forever)")
    return out


@pytest.fixture
def one_thread():
    """The reference process computes like a rank (and does not fight the ranks' threads for 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, backbone", CASES)
def test_two_processes_train_as_one_process_on_the_same_global_batch(ddp_run, one_thread, tmp_path, name, backbone):
    key = f"{name}-{backbone}"
    rank0, rank1 = (torch.load(ddp_run / f"rank{r}.pt", weights_only=True)[key] for r in range(WORLD))
    single = _train(name, backbone, tmp_path / key).state_dict()
    history = loss_history(tmp_path / key)
    assert len(history) == 2 and loss_history(ddp_run / key) == pytest.approx(history, rel=1e-4)
    assert single.keys() == rank0.keys()
    for k, v in single.items():
        torch.testing.assert_close(rank0[k], v, rtol=1e-4, atol=1e-5, msg=f"{key} {k}")
        assert torch.equal(rank1[k], rank0[k]), f"{key} {k} differs between the ranks"
    trained = [k for k, v in single.items() if v.is_floating_point() and not torch.equal(v, build(name, backbone)
                                                                                         .state_dict()[k])]
    assert trained  # the comparison is about weights that moved


def test_icutmix_keeps_the_ranks_identical(ddp_run):
    rank0, rank1 = (torch.load(ddp_run / f"rank{r}.pt", weights_only=True)["icutmix"] for r in range(WORLD))
    for k, v in rank0.items():
        assert torch.equal(rank1[k], v), k
        assert not v.is_floating_point() or torch.isfinite(v).all(), k


def test_rank0_computes_stages_alone_and_every_rank_pretrains(ddp_run):
    stages = [json.loads((ddp_run / f"stages{r}.json").read_text()) for r in range(WORLD)]
    assert [s["value"] for s in stages] == ["rank 0", "rank 0"]  # rank 1 read what rank 0 cached
    assert stages[0]["log"] == [["probe", 1], ["pretrain", 2]]  # rank 0 alone: collectives act as on one process
    assert stages[1]["log"] == [["pretrain", 2]]
    assert [s["first"] for s in stages] == [0, 1] and [s["again"] for s in stages] == [-1, -1]
    assert (ddp_run / "cache" / "probe" / "k" / "DONE").is_file()
