"""DistributedDataParallel on CPU (gloo): two processes on half a batch each get
the gradients of one process on the whole batch (mean-reduced loss)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _distributed import WORLD, batch, free_port, half_batch, process_group
from torch.nn.parallel import DistributedDataParallel
from utils import randomise_offsets

from ddsm_triton import DDSM

# DDP only hooks parameter gradients, so the op's backend does not change what it
# does; the Triton path is covered by the compile, AMP, channels_last and parity
# tests. A Triton run here costs ~45 s (interpreter start-up in each new process).
BACKENDS = ["reference"]


def _model(backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = DDSM(4, 6, dim=4, groups=2, pool_size=2, backend=backend)
    return randomise_offsets(layer).double()


def _loss(model: torch.nn.Module, x_low, x_high, target) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x_low, x_high), target)  # mean over the batch


def _worker(rank: int, port: int, backend: str, out_dir: str) -> None:
    with process_group(rank, port):
        model = DistributedDataParallel(_model(backend))
        _loss(model, *half_batch(rank)).backward()
        grads = {n.removeprefix("module."): p.grad for n, p in model.named_parameters()}
        torch.save(grads, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_two_processes_match_one_process_on_the_whole_batch(
    backend: str, tmp_path: Path
) -> None:
    # TRITON_INTERPRET (set by conftest) reaches the spawned workers through the environment.
    mp.spawn(_worker, args=(free_port(), backend, str(tmp_path)), nprocs=WORLD, join=True)

    model = _model(backend)
    _loss(model, *batch()).backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert grads.keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            assert p.grad.abs().sum() > 0, name
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
