"""Deterministic map gradients (``torch.are_deterministic_algorithms_enabled()``): no
atomics. The backward writes one entry per (cell, sample, corner): the map row it adds
to (``P`` when the corner is outside the map) and two coefficients, ``w_c scale dl_n``
for the key map and ``w_c A_n`` for the value map. A stable sort and ``searchsorted``
give each map row its entries in a fixed order, and ``segment_sum_kernel`` adds up
``coefficient * source row`` (the query for the key map, ``dO`` for the value map).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..bilinear import channels, load_rows, per_cell, store_rows, zero_rows
from .configs import tuned, tuning_bucket


@tuned("segment_sum", "src_ptr", ["BUCKET", "WEIGHT"])
@triton.jit
def segment_sum_kernel(
    starts_ptr,  # (R + 1,) int: first sorted entry of each map row
    order_ptr,  # (E,) int: entry ids, sorted stably by map row
    entry_weights_ptr,  # (E, 2) per-entry coefficients
    src_ptr,  # (P, D) source rows: query or dO
    out_ptr,  # (R, D) out: the map gradient
    R,
    D,
    ENTRIES_PER_CELL,  # 4 N: entry e comes from source cell e // ENTRIES_PER_CELL
    BUCKET,
    WEIGHT: tl.constexpr,  # coefficient 0 (key map) or 1 (value map)
    TILE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHUNK: tl.constexpr,
    VEC: tl.constexpr,
):
    """``out[r] = sum_{e -> r} weight[e] * src[cell(e)]`` in sorted order.
    Grid ``(cdiv(R, BLOCK_R), cdiv(D, BLOCK_D))``."""
    ACC: tl.constexpr = entry_weights_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    d = channels(tl.program_id(1) * BLOCK_D, BLOCK_D, CHUNK, VEC)
    start = tl.load(starts_ptr + rows, mask=row_mask, other=0)
    count = tl.load(starts_ptr + rows + 1, mask=row_mask, other=0) - start
    acc = zero_rows(rows, d, ACC)
    for t in range(0, tl.max(count, axis=0)):
        live = t < count
        e = tl.load(order_ptr + start + t, mask=live, other=0)
        weight = tl.load(entry_weights_ptr + e * 2 + WEIGHT, mask=live, other=0.0)
        source = load_rows(src_ptr, e // ENTRIES_PER_CELL, live, d, D, ACC)
        acc += per_cell(weight) * source
    store_rows(out_ptr, rows, row_mask, d, D, acc)


def entry_dtype(entries: int) -> torch.dtype:
    """Map rows and entry ids in 32 bits when they fit (sorts faster, divides without
    a call), else 64."""
    return torch.int32 if entries < 2**31 else torch.int64


def map_gradients(
    entry_rows: torch.Tensor,
    entry_weights: torch.Tensor,
    sources: tuple[torch.Tensor, torch.Tensor],
    maps: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Fill the key and value map gradients ``maps`` (``(P, D)`` rows, any float dtype)
    from the entries (``(P, N, 4)`` map rows, ``(P, N, 4, 2)`` coefficients) and the
    ``sources`` (query, dO), deterministically."""
    P, N = entry_rows.shape[:2]
    device = entry_rows.device
    sorted_rows, order = torch.sort(entry_rows.flatten(), stable=True)
    bounds = torch.arange(P + 1, device=device, dtype=entry_rows.dtype)
    starts = torch.searchsorted(sorted_rows, bounds)
    order = order.to(entry_rows.dtype)
    for weight, (src, out) in enumerate(zip(sources, maps, strict=True)):
        D = src.shape[-1]

        def grid(meta, D=D):
            return (triton.cdiv(P, meta["BLOCK_R"]), triton.cdiv(D, meta["BLOCK_D"]))

        segment_sum_kernel[grid](
            starts_ptr=starts,
            order_ptr=order,
            entry_weights_ptr=entry_weights,
            src_ptr=src,
            out_ptr=out,
            R=P,
            D=D,
            ENTRIES_PER_CELL=4 * N,
            BUCKET=tuning_bucket(P, D),
            WEIGHT=weight,
        )
