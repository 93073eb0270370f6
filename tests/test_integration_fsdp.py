"""FSDP2 (``fully_shard``) on CPU (gloo): two processes on half a batch each, every DDSM
layer sharded and then the model, get the gradients of one process on the whole batch
(mean-reduced loss), and one optimiser step leaves the same parameters."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp
from _distributed import WORLD, batch, free_port, half_batch, process_group
from torch import nn
from torch.distributed.fsdp import fully_shard

from ddsm_triton import DDSM

# Sharding only changes where parameters and gradients live, not what the op computes;
# the reference backend keeps each spawned process cheap (see the DDP test).
BACKEND = "reference"
LR = 0.1


class TwoLayers(nn.Module):
    """Two DDSM layers in a row, both fusing the same semantic map."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DDSM(4, 6, dim=4, groups=2, pool_size=2, backend=BACKEND) for _ in range(2)
        )

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x_low = layer(x_low, x_high)
        return x_low


def _model() -> TwoLayers:
    torch.manual_seed(0)
    model = TwoLayers()
    with torch.no_grad():
        for layer in model.layers:
            layer.spatial.offset.weight.normal_(0, 0.2)
            layer.channel.offset.weight.normal_(0, 0.2)
    return model.double()


def _step(model: nn.Module, x_low, x_high, target) -> tuple[dict, dict]:
    """Gradients after one backward of the mean loss, and parameters after one SGD step,
    by name, as full (unsharded) tensors."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    torch.nn.functional.mse_loss(model(x_low, x_high), target).backward()
    grads = {n: _full(p.grad) for n, p in model.named_parameters()}
    optimizer.step()
    params = {n: _full(p.detach()) for n, p in model.named_parameters()}
    return grads, params


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered whole; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t.clone()


def _worker(rank: int, port: int, out_dir: str) -> None:
    with process_group(rank, port):
        model = _model()
        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        # Every parameter is now a DTensor, sharded over the two processes.
        assert all(hasattr(p, "full_tensor") for p in model.parameters())
        grads, params = _step(model, *half_batch(rank))
        torch.save({"grads": grads, "params": params}, Path(out_dir) / f"rank{rank}.pt")


def test_fsdp2_two_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads, params = _step(model, *batch())
    for rank in range(WORLD):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["grads"].keys() == grads.keys() == params.keys()
        for name in grads:
            assert grads[name].abs().sum() > 0, f"{name}: zero gradient, the check is vacuous"
            torch.testing.assert_close(
                saved["grads"][name], grads[name], rtol=1e-9, atol=1e-12, msg=name
            )
            torch.testing.assert_close(
                saved["params"][name], params[name], rtol=1e-9, atol=1e-12, msg=name
            )
            assert not torch.equal(params[name], before[name]), f"{name} did not move"
