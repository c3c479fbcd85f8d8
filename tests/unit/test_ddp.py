"""Two gloo processes under DDP take the same steps as one process on the global batch (#3)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tell.encoders import EncoderSpec
from tell.engine import train_step
from tell.model import TELLNet
from tell.optim import make_optimizer
from tell.schedule import CENTERS, FEATURES

STEPS = 6
GLOBAL_BATCH = 64


def _build(kind: str) -> tuple[TELLNet, torch.optim.Optimizer | None]:
    torch.manual_seed(0)
    spec = EncoderSpec(kind, 16, latent_dim=4, hidden_dims=(8,))
    net = TELLNet(spec, n_clusters=5)
    return net, make_optimizer(net, "adam", 1e-2)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(GLOBAL_BATCH, 16, generator=g) for _ in range(STEPS)]


def _run(model, net, optimizer, rank: int, world: int) -> None:
    half = GLOBAL_BATCH // world
    for step, x in enumerate(_batches()):
        phase = CENTERS if step % 2 == 0 or not net.has_decoder else FEATURES
        train_step(model, x[rank * half : (rank + 1) * half], optimizer, phase)


def _worker(rank: int, world: int, kind: str, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net, optimizer = _build(kind)
    model = DistributedDataParallel(net)
    _run(model, net, optimizer, rank, world)
    torch.save(net.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    # Both ranks leave together: a rank that tore its group down while the other still
    # held its connections aborted now and then ("terminate called without an active
    # exception", SIGABRT: 1 run in 8 here).
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["identity", "mlp"])
def test_two_process_ddp_equals_single_process_on_global_batches(kind, tmp_path):
    mp.start_processes(
        _worker, args=(2, kind, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs across ranks"
    net, optimizer = _build(kind)
    _run(net, net, optimizer, rank=0, world=1)
    single = net.state_dict()
    torch.testing.assert_close(rank0["cluster.weight"], single["cluster.weight"], atol=1e-5, rtol=0)
    for name in single:
        torch.testing.assert_close(rank0[name], single[name], atol=1e-5, rtol=1e-4)
