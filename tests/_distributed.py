"""Two-process tests on CPU (gloo): the batch the processes split, a free port, and the
process group of one spawned worker."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import torch
import torch.distributed as dist

WORLD = 2
BATCH = 4


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_low (BATCH, 4, 6, 6), x_high (BATCH, 6, 4, 4) and a target like x_low, float64,
    the same in every process."""
    g = torch.Generator().manual_seed(1)
    x_low = torch.randn(BATCH, 4, 6, 6, generator=g, dtype=torch.float64)
    x_high = torch.randn(BATCH, 6, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randn(BATCH, 4, 6, 6, generator=g, dtype=torch.float64)
    return x_low, x_high, target


def half_batch(rank: int) -> tuple[torch.Tensor, ...]:
    """Process ``rank``'s share of ``batch()``."""
    half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    return tuple(t[half] for t in batch())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_group(rank: int, port: int) -> Iterator[None]:
    """Join the gloo group of WORLD processes on ``port``, one thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        yield
    finally:
        dist.destroy_process_group()
