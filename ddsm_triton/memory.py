"""How many bytes autograd keeps for backward: a layer's activation memory, exactly.

Works on any device and under ``FakeTensorMode`` (shapes only, no compute), so the
memory of sizes that do not fit can still be counted. Used by the benchmarks and the
tests that bound what the kernels save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

__all__ = ["SavedBytes", "saved_bytes"]


def _storage_key(t: torch.Tensor) -> int:
    """Identity of the memory block behind ``t`` (views share it), real or fake."""
    from torch.multiprocessing.reductions import StorageWeakRef

    return StorageWeakRef(t.untyped_storage()).cdata


@dataclass(frozen=True)
class SavedBytes:
    """What autograd keeps for backward after a forward.

    Attributes:
        total: bytes of every distinct storage saved, inputs and parameters included.
        activations: the same without the storages of ``exclude`` (the inputs and
            parameters, which exist anyway): the memory the forward adds.
        tensors: number of distinct storages saved.
    """

    total: int
    activations: int
    tensors: int


def saved_bytes(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> SavedBytes:
    """Bytes autograd saves for backward while ``forward()`` runs, each storage once.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: the pack hook sees every
    tensor that any autograd node saves. A storage is counted once however many
    views of it are saved, and counted whole (a saved view keeps its whole storage
    alive). Exact on any device, and under ``FakeTensorMode`` it costs no compute,
    so sizes too big to run can still be measured.
    """
    excluded = {_storage_key(t) for t in exclude}
    seen: dict[int, int] = {}
    # Holding the saved tensors until the count is done keeps their storages alive,
    # so a freed storage's address can never be reused by a later one and miscounted.
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in seen:
            seen[key] = t.untyped_storage().nbytes()
            keep.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    total = sum(seen.values())
    activations = sum(n for key, n in seen.items() if key not in excluded)
    del out
    keep.clear()
    return SavedBytes(total, activations, len(seen))
