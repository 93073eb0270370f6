"""DistributedDataParallel on CPU (gloo): two processes on half a batch each get
the gradients of one process on the whole batch (mean-reduced loss)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from utils import randomise_offsets

from ddsm_triton import DDSM

# DDP only hooks parameter gradients, so the op's backend does not change what it
# does; the Triton path is covered by the compile, AMP, channels_last and parity
# tests. A Triton run here costs ~45 s (interpreter start-up in each new process).
BACKENDS = ["reference"]
WORLD = 2
BATCH = 4


def _model(backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = DDSM(4, 6, dim=4, groups=2, pool_size=2, backend=backend)
    return randomise_offsets(layer).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x_low = torch.randn(BATCH, 4, 6, 6, generator=g, dtype=torch.float64)
    x_high = torch.randn(BATCH, 6, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randn(BATCH, 4, 6, 6, generator=g, dtype=torch.float64)
    return x_low, x_high, target


def _loss(model: torch.nn.Module, x_low, x_high, target) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x_low, x_high), target)  # mean over the batch


def _worker(rank: int, port: int, backend: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = DistributedDataParallel(_model(backend))
        half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        _loss(model, *(t[half] for t in _batch())).backward()
        grads = {n.removeprefix("module."): p.grad for n, p in model.named_parameters()}
        torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_two_processes_match_one_process_on_the_whole_batch(
    backend: str, tmp_path: Path
) -> None:
    # TRITON_INTERPRET (set by conftest) reaches the spawned workers through the environment.
    mp.spawn(_worker, args=(_free_port(), backend, str(tmp_path)), nprocs=WORLD, join=True)

    model = _model(backend)
    _loss(model, *_batch()).backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert grads.keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            assert p.grad.abs().sum() > 0, name
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
