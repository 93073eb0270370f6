"""Dynamic sample attention (docs/semantics.md §1) as fused Triton kernels.

Every cell attends over ``N = k*k`` bilinearly sampled keys and values:

    l_n = clamp(scale * <q, K_n>, -M, M),   A = softmax_n(l),   out = sum_n A_n V_n.

One program owns ``BLOCK_P`` cells and, in registers, all ``Dk`` (and, up to
``MAX_BLOCK_D`` channels, all ``Dv``) channels of each: the query is loaded once, every
logit is computed once, every corner row is read once, with wide vector loads. The
channel block is the next power of two of the width; the autotuned ``TILE`` (elements per
program) sets how many cells share a program, so narrow heads get more cells.

Forward (``_dsa_fwd_kernel``): per sample the four key corners give the logit, the four
value corners the online-softmax update. It writes ``out`` and the per-cell log-sum-exp
(accumulation dtype), nothing of size ``N x D``.

Backward (``_dsa_bwd_kernel``), one pass over the gathered corners: the logits and
``A_n = exp(l_n - lse)`` are recomputed from the saved log-sum-exp; the same key and
value corners give ``dA_n = <dO, V_n>``, the offset-gradient dots and the dvalue atomics
``w_c A_n dO``; ``dq`` accumulates in registers as ``sum A_n dA_n K_n`` and
``sum A_n K_n``. ``Delta = sum_n A_n dA_n`` is thus exact in the accumulation dtype (not
read from a half-precision ``out``). A second, gather-free loop over the samples reads
back six per-sample scalars, recomputes the positions and issues ``doffsets`` and the
dkey atomics ``w_c scale dl_n q``, ``dl_n = A_n (dA_n - Delta)``.

Wide values (the channel branch, ``Dv = h'*w'`` in the thousands on a small grid):
the forward kernel writes the ``N`` logits and lse per cell without touching values;
``_dsa_wide_kernel`` then splits ``Dv`` over a second grid axis, which fills the GPU
even at a few hundred cells. Forward, it sums ``A_n V_n``; backward, it writes per-tile
partial ``(dA_n, <dO, dV_n/dy>, <dO, dV_n/dx>)`` and the dvalue atomics, and the
backward kernel finishes with the key side, reading those sums instead of values.

Deterministic mode (``torch.are_deterministic_algorithms_enabled()``): no atomics. The
backward writes, per (cell, sample, corner), the target map row and two coefficients;
a stable sort and ``searchsorted`` give each map row its contributions in a fixed order,
and ``_segment_sum_kernel`` adds them up.

All arithmetic runs in float32 (float64 for float64 inputs); half types are upcast
right after each load and cast on the final store.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from ddsm_triton._backend import interpreting
from ddsm_triton._numerics import compute_dtype as _acc_dtype

from .bilinear import (
    blend,
    blend_rows,
    cell_coords,
    clamped_logit,
    gather_corners,
    load_rows,
    row_dots,
    sample_corners,
    scatter_corners,
    store_rows,
    weight_grads,
)

__all__ = [
    "CONFIGS",
    "INTERPRETER_CONFIGS",
    "KERNEL_VARIANTS",
    "MAX_BLOCK_D",
    "MIN_LOAD_BYTES",
    "THREAD_ELEMENTS",
    "KernelVariant",
    "block_sizes",
    "configs_for",
    "dynamic_sample_attention",
]

# Read once, at import: ``@triton.jit`` decides between compiling and interpreting at
# decoration time, so this is what the kernels below were built for.
INTERPRET = interpreting()

# --------------------------------------------------------------------------------------
# Launch configurations: the one place that lists what the library can launch.
# ``bench/kernel_report.py`` compiles each of them for sm_80 / sm_90 and
# ``bench/traffic.py`` measures the bytes each requests.
# --------------------------------------------------------------------------------------
_C = triton.Config

# Channel blocks are the next power of two of the width, within these bounds. Up to
# MAX_BLOCK_D value channels stay in one program; wider values take the Dv-split path.
MIN_BLOCK_D = 16
MAX_BLOCK_D = 512

# A config gives TILE, the elements of one [cells x channels] tile of a program, and the
# warps; the channel blocks follow from the widths and the cells per program from TILE
# (block_sizes). Gathers address every row through a 64-bit pointer and the backward
# holds four tiles (q, dO, the two dq sums) besides the gathered corners, so each
# thread's share of a tile is capped per kernel and accumulation itemsize, at what
# compiles without spills for sm_80 and sm_90 (the kernel report checks it).
# MIN_LOAD_BYTES keeps each thread's share of a row, hence its widest load, >= 64 bits.
THREAD_ELEMENTS = {
    "dsa_fwd": {4: 8, 8: 4},
    "dsa_bwd": {4: 8, 8: 2},
    "dsa_wide": {4: 8, 8: 4},
    "segment_sum": {4: 8, 8: 8},
}
MIN_LOAD_BYTES = 8

CONFIGS: dict[str, list[triton.Config]] = {
    "dsa_fwd": [
        _C({"TILE": 1024}, num_warps=4, num_stages=1),
        _C({"TILE": 2048}, num_warps=8, num_stages=1),
        _C({"TILE": 512}, num_warps=4, num_stages=1),
    ],
    # Eight warps: sm_80 has no vector atomics, so each scattered element holds its own
    # 64-bit address, and four warps at 8 elements a thread spilled there.
    "dsa_bwd": [
        _C({"TILE": 1024}, num_warps=8, num_stages=1),
        _C({"TILE": 512}, num_warps=8, num_stages=1),
    ],
    # Dv-split: BLOCK_DV channels per program (<= the narrow path's whole Dv).
    "dsa_wide": [
        _C({"TILE": 1024, "BLOCK_DV": 256}, num_warps=4, num_stages=1),
        _C({"TILE": 2048, "BLOCK_DV": 512}, num_warps=8, num_stages=1),
        _C({"TILE": 512, "BLOCK_DV": 256}, num_warps=4, num_stages=1),
    ],
    "segment_sum": [
        _C({"TILE": 1024}, num_warps=4, num_stages=1),
    ],
}

# The interpreter cannot autotune (no driver to time on) and pays a large fixed cost
# per program and per operation, so it runs exactly one configuration with big tiles
# (128 cells at 16 channels).
INTERPRETER_CONFIGS: dict[str, triton.Config] = {
    "dsa_fwd": _C({"TILE": 2048}),
    "dsa_bwd": _C({"TILE": 2048}),
    "dsa_wide": _C({"TILE": 4096, "BLOCK_DV": 512}),
    "segment_sum": _C({"TILE": 4096}),
}


def channel_block(width: int) -> int:
    """Lanes for ``width`` channels: the next power of two, at least MIN_BLOCK_D, so a
    block idles fewer than half its lanes whenever ``width >= MIN_BLOCK_D / 2``."""
    return max(MIN_BLOCK_D, triton.next_power_of_2(width))


def wide(DV: int) -> bool:
    """Whether ``DV`` value channels take the Dv-split path."""
    return channel_block(DV) > MAX_BLOCK_D


def block_sizes(name: str, args: dict) -> dict[str, int]:
    """Block shape of kernel ``name`` for a launch's arguments (``TILE`` from the config,
    ``DK``/``DV``/``D`` and flags from the call): the channel blocks from the widths and
    ``BLOCK_P`` (``BLOCK_R``) cells so that a tile holds ``TILE`` elements. The one
    definition used by the launches (via ``triton.heuristics``), the kernel report and
    the traffic meter."""
    tile = args["TILE"]
    if name == "segment_sum":
        block_d = min(channel_block(args["D"]), MAX_BLOCK_D)
        return {"BLOCK_D": block_d, "BLOCK_R": max(1, tile // block_d)}
    if name == "dsa_wide":
        return {"BLOCK_P": max(1, tile // args["BLOCK_DV"])}
    blocks = {"BLOCK_DK": channel_block(args["DK"])}
    # Kernels that leave the values to the Dv-split kernel carry a minimal value block.
    narrow = args.get("VALUES", True) and not args.get("VALUE_SUMS", False)
    blocks["BLOCK_DV"] = channel_block(args["DV"]) if narrow else MIN_BLOCK_D
    blocks["BLOCK_P"] = max(1, tile // max(blocks.values()))
    return blocks


def fits(name: str, config: triton.Config, dtype: torch.dtype) -> bool:
    """Whether ``config`` of kernel ``name`` suits inputs of ``dtype``: each thread's
    share of a tile within THREAD_ELEMENTS and at least MIN_LOAD_BYTES."""
    per_thread = config.kwargs["TILE"] // (32 * config.num_warps)
    cap = THREAD_ELEMENTS[name][_acc_dtype(dtype).itemsize]
    return per_thread <= cap and per_thread * dtype.itemsize >= MIN_LOAD_BYTES


def configs_for(name: str, dtype: torch.dtype) -> list[triton.Config]:
    """The configurations kernel ``name`` may launch with on a GPU for ``dtype``."""
    return [c for c in CONFIGS[name] if fits(name, c, dtype)]


def _tuning(name: str, dtype_arg: str, key: list[str]) -> dict:
    """``triton.autotune`` arguments of kernel ``name``: its configs (one under the
    interpreter), a key with the widths, flags and a size bucket of the cell count,
    and a pruner keeping the configs that suit the launch's dtype (``fits``)."""

    def prune(configs, named_args, **kwargs):
        return [c for c in configs if fits(name, c, named_args[dtype_arg].dtype)]

    configs = [INTERPRETER_CONFIGS[name]] if INTERPRET else CONFIGS[name]
    return {
        "configs": configs,
        "key": [*key, "P_BUCKET"],
        "prune_configs_by": {"early_config_prune": prune},
    }


def _blocks(name: str) -> Callable:
    """``triton.heuristics`` deriving the block shape from TILE and the widths."""

    def pick(key: str) -> Callable:
        return lambda args: block_sizes(name, args)[key]

    keys = block_sizes(name, _EXAMPLE_ARGS[name]).keys()
    return triton.heuristics({k: pick(k) for k in keys})


# Arguments enough to list the block names of each kernel.
_EXAMPLE_ARGS = {
    "dsa_fwd": {"TILE": 1, "DK": 1, "DV": 1, "VALUES": True},
    "dsa_bwd": {"TILE": 1, "DK": 1, "DV": 1, "VALUE_SUMS": False},
    "dsa_wide": {"TILE": 1, "BLOCK_DV": 1},
    "segment_sum": {"TILE": 1, "D": 1},
}


def size_bucket(P: int) -> int:
    """Autotune bucket of the cell count: a config tuned on a 32x32 map is not reused
    at 256x512 (the best tile differs when the grid no longer fills the GPU)."""
    return max(P, 1).bit_length()


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------


@triton.jit
def _cell_tile(P, H, W, G, BLOCK_P: tl.constexpr):
    """This program's cells (int64 ``[BLOCK_P]``), their mask and grid coordinates."""
    cells = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    cell_mask = cells < P
    i, j, base = cell_coords(cells, H, W, G)
    return cells, cell_mask, i, j, base


@triton.autotune(**_tuning("dsa_fwd", "q_ptr", ["DK", "DV", "KSIZE", "VALUES"]))
@_blocks("dsa_fwd")
@triton.jit
def _dsa_fwd_kernel(
    q_ptr,  # (P, DK) queries, one row per cell
    k_ptr,  # (P, DK) key map rows
    v_ptr,  # (P, DV) value map rows
    off_ptr,  # (P, N, 2) offsets (dy, dx) in grid cells
    scale_ptr,  # (1,) logit scale, accumulation dtype (exact for float64)
    out_ptr,  # (P, DV) out if VALUES: output, value dtype
    lse_ptr,  # (P,) out: log-sum-exp of the logits; its dtype is the accumulation dtype
    logit_ptr,  # (P, N) out unless VALUES: the logits, for the Dv-split kernel
    P,  # number of cells B*H*W*G
    H,
    W,
    G,
    DK,
    DV,
    KSIZE,  # window side k, N = k*k
    dilation,
    P_BUCKET,  # autotune key only
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    VALUES: tl.constexpr,  # False: logits only (wide values are summed by _dsa_wide_kernel)
):
    """Grid ``(cdiv(P, BLOCK_P),)``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    N = KSIZE * KSIZE
    cells, cell_mask, i, j, base = _cell_tile(P, H, W, G, BLOCK_P)
    scale = tl.load(scale_ptr)
    dk = tl.arange(0, BLOCK_DK)
    dk_mask = dk < DK
    dv = tl.arange(0, BLOCK_DV)
    dv_mask = dv < DV
    q = load_rows(q_ptr, cells, cell_mask, dk, dk_mask, DK, ACC)

    m = tl.full([BLOCK_P], float("-inf"), ACC)  # running max of the logits
    s = tl.zeros([BLOCK_P], ACC)  # running sum of exp(l - m)
    acc = tl.zeros([BLOCK_P, BLOCK_DV], ACC)  # running sum of exp(l - m) * V_n
    for n in range(N):
        rows, masks, w, _fy, _fx = sample_corners(
            off_ptr, cells, cell_mask, n, i, j, base, H, W, G, KSIZE, dilation, ACC
        )
        keys = gather_corners(k_ptr, rows, masks, dk, dk_mask, DK, ACC)
        logit = clamped_logit(scale, w, row_dots(q, keys))
        m_new = tl.maximum(m, logit)
        alpha = tl.exp(m - m_new)  # rescales the old sums; exp(-inf) = 0 on the first sample
        p = tl.exp(logit - m_new)
        s = s * alpha + p
        m = m_new
        if VALUES:
            values = blend_rows(w, gather_corners(v_ptr, rows, masks, dv, dv_mask, DV, ACC))
            acc = acc * alpha[:, None] + p[:, None] * values
        else:
            tl.store(logit_ptr + cells * N + n, logit, cell_mask)

    tl.store(lse_ptr + cells, m + tl.log(s), cell_mask)
    if VALUES:
        store_rows(out_ptr, cells, cell_mask, dv, dv_mask, DV, acc / s[:, None])


@triton.autotune(
    **_tuning("dsa_wide", "v_ptr", ["DV", "KSIZE", "BACKWARD", "ATOMICS"]),
    reset_to_zero=["dv_ptr"],
)
@_blocks("dsa_wide")
@triton.jit
def _dsa_wide_kernel(
    v_ptr,  # (P, DV) value map rows
    off_ptr,  # (P, N, 2)
    logit_ptr,  # (P, N) logits from _dsa_fwd_kernel(VALUES=False)
    lse_ptr,  # (P,) their log-sum-exp
    do_ptr,  # (P, DV) if BACKWARD: incoming gradient of out
    out_ptr,  # (P, DV) out unless BACKWARD: output, value dtype
    dv_ptr,  # (P, DV) if BACKWARD and ATOMICS: value map gradient, accumulation dtype
    part_ptr,  # (T, P, N, 3) out if BACKWARD: per Dv tile t, partial dA_n and <dO, dV_n/dp>
    P,
    H,
    W,
    G,
    DV,
    KSIZE,
    dilation,
    P_BUCKET,
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BACKWARD: tl.constexpr,
    ATOMICS: tl.constexpr,
):
    """The value side of wide Dv, split over channel tiles.
    Grid ``(cdiv(P, BLOCK_P), cdiv(DV, BLOCK_DV))``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    N = KSIZE * KSIZE
    cells, cell_mask, i, j, base = _cell_tile(P, H, W, G, BLOCK_P)
    dv = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_mask = dv < DV
    lse = tl.load(lse_ptr + cells, mask=cell_mask, other=0.0)
    if BACKWARD:
        do = load_rows(do_ptr, cells, cell_mask, dv, dv_mask, DV, ACC)
        part = part_ptr + ((tl.program_id(1) * P + cells) * N) * 3
    acc = tl.zeros([BLOCK_P, BLOCK_DV], ACC)
    for n in range(N):
        rows, masks, w, fy, fx = sample_corners(
            off_ptr, cells, cell_mask, n, i, j, base, H, W, G, KSIZE, dilation, ACC
        )
        a = tl.exp(tl.load(logit_ptr + cells * N + n, mask=cell_mask, other=0.0) - lse)
        values = gather_corners(v_ptr, rows, masks, dv, dv_mask, DV, ACC)
        if BACKWARD:
            g = row_dots(do, values)
            wy, wx = weight_grads(fy, fx)
            tl.store(part + n * 3, blend(w, g), cell_mask)
            tl.store(part + n * 3 + 1, blend(wy, g), cell_mask)
            tl.store(part + n * 3 + 2, blend(wx, g), cell_mask)
            if ATOMICS:
                scatter_corners(dv_ptr, rows, masks, w, a[:, None] * do, dv, dv_mask, DV)
        else:
            acc += a[:, None] * blend_rows(w, values)
    if not BACKWARD:
        store_rows(out_ptr, cells, cell_mask, dv, dv_mask, DV, acc)


@triton.autotune(
    **_tuning("dsa_bwd", "q_ptr", ["DK", "DV", "KSIZE", "VALUE_SUMS", "ATOMICS"]),
    # Autotuning runs the kernel once per config: the atomics' targets restart at zero.
    reset_to_zero=["dk_ptr", "dv_ptr"],
)
@_blocks("dsa_bwd")
@triton.jit
def _dsa_bwd_kernel(
    q_ptr,  # (P, DK)
    k_ptr,  # (P, DK)
    v_ptr,  # (P, DV) unless VALUE_SUMS
    off_ptr,  # (P, N, 2)
    scale_ptr,  # (1,) accumulation dtype
    lse_ptr,  # (P,) forward log-sum-exp
    do_ptr,  # (P, DV) unless VALUE_SUMS: incoming gradient of out
    vsum_ptr,  # (P, N, 3) if VALUE_SUMS: dA_n, <dO, dV_n/dy>, <dO, dV_n/dx>
    stash_ptr,  # (P, N, 6) scratch: per-sample scalars between the two loops
    dq_ptr,  # (P, DK) out: query gradient, query dtype
    doff_ptr,  # (P, N, 2) out: offset gradient, offsets dtype
    dk_ptr,  # (P, DK) if ATOMICS: key map gradient, accumulation dtype, zeroed
    dv_ptr,  # (P, DV) if ATOMICS and not VALUE_SUMS: value map gradient, likewise
    tgt_ptr,  # (P, N, 4) out unless ATOMICS: map row of each corner, P if out of bounds
    tcoef_ptr,  # (P, N, 4, 2) out unless ATOMICS: w_c * (scale * dl_n, A_n)
    P,
    H,
    W,
    G,
    DK,
    DV,
    KSIZE,
    dilation,
    P_BUCKET,
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    VALUE_SUMS: tl.constexpr,  # True: wide Dv, value sums from _dsa_wide_kernel
    ATOMICS: tl.constexpr,  # False: deterministic mode, write entries instead
):
    """Grid ``(cdiv(P, BLOCK_P),)``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    N = KSIZE * KSIZE
    cells, cell_mask, i, j, base = _cell_tile(P, H, W, G, BLOCK_P)
    scale = tl.load(scale_ptr)
    lse = tl.load(lse_ptr + cells, mask=cell_mask, other=0.0)
    dk = tl.arange(0, BLOCK_DK)
    dk_mask = dk < DK
    dv = tl.arange(0, BLOCK_DV)
    dv_mask = dv < DV
    q = load_rows(q_ptr, cells, cell_mask, dk, dk_mask, DK, ACC)
    if not VALUE_SUMS:
        do = load_rows(do_ptr, cells, cell_mask, dv, dv_mask, DV, ACC)

    # dq = scale * sum_n A_n (dA_n - Delta) K_n, from two sums over the samples.
    k_sum = tl.zeros([BLOCK_P, BLOCK_DK], ACC)  # sum_n A_n K_n
    k_dsum = tl.zeros([BLOCK_P, BLOCK_DK], ACC)  # sum_n A_n dA_n K_n
    delta = tl.zeros([BLOCK_P], ACC)  # sum_n A_n dA_n = <dO, out>
    for n in range(N):
        rows, masks, w, fy, fx = sample_corners(
            off_ptr, cells, cell_mask, n, i, j, base, H, W, G, KSIZE, dilation, ACC
        )
        wy, wx = weight_grads(fy, fx)
        keys = gather_corners(k_ptr, rows, masks, dk, dk_mask, DK, ACC)
        h = row_dots(q, keys)
        a = tl.exp(clamped_logit(scale, w, h) - lse)
        if VALUE_SUMS:
            vsum = vsum_ptr + (cells * N + n) * 3
            da = tl.load(vsum, mask=cell_mask, other=0.0)
            gy = tl.load(vsum + 1, mask=cell_mask, other=0.0)
            gx = tl.load(vsum + 2, mask=cell_mask, other=0.0)
        else:
            g = row_dots(do, gather_corners(v_ptr, rows, masks, dv, dv_mask, DV, ACC))
            da = blend(w, g)
            gy = blend(wy, g)
            gx = blend(wx, g)
            if ATOMICS:
                scatter_corners(dv_ptr, rows, masks, w, a[:, None] * do, dv, dv_mask, DV)
        sample = blend_rows(w, keys)
        k_sum += a[:, None] * sample
        k_dsum += (a * da)[:, None] * sample
        delta += a * da
        # What the second loop needs and cannot recompute without gathering again.
        st = stash_ptr + (cells * N + n) * 6
        tl.store(st, a, cell_mask)
        tl.store(st + 1, da, cell_mask)
        tl.store(st + 2, scale * blend(wy, h), cell_mask)  # scale * <q, dK_n/dy>
        tl.store(st + 3, scale * blend(wx, h), cell_mask)
        tl.store(st + 4, gy, cell_mask)  # <dO, dV_n/dy>
        tl.store(st + 5, gx, cell_mask)
    dq = scale * (k_dsum - delta[:, None] * k_sum)
    store_rows(dq_ptr, cells, cell_mask, dk, dk_mask, DK, dq)

    for n in range(N):
        rows, masks, w, _fy, _fx = sample_corners(
            off_ptr, cells, cell_mask, n, i, j, base, H, W, G, KSIZE, dilation, ACC
        )
        st = stash_ptr + (cells * N + n) * 6
        a = tl.load(st, mask=cell_mask, other=0.0)
        dl = a * (tl.load(st + 1, mask=cell_mask, other=0.0) - delta)
        doff_y = dl * tl.load(st + 2, mask=cell_mask) + a * tl.load(st + 4, mask=cell_mask)
        doff_x = dl * tl.load(st + 3, mask=cell_mask) + a * tl.load(st + 5, mask=cell_mask)
        doff = doff_ptr + (cells * N + n) * 2
        tl.store(doff, doff_y.to(doff_ptr.dtype.element_ty), cell_mask)
        tl.store(doff + 1, doff_x.to(doff_ptr.dtype.element_ty), cell_mask)
        if ATOMICS:
            scatter_corners(dk_ptr, rows, masks, w, (scale * dl)[:, None] * q, dk, dk_mask, DK)
        else:
            for c in tl.static_range(4):
                e = (cells * N + n) * 4 + c
                tgt = tl.where(masks[c], rows[c], P).to(tgt_ptr.dtype.element_ty)
                tl.store(tgt_ptr + e, tgt, cell_mask)
                tl.store(tcoef_ptr + e * 2, w[c] * scale * dl, cell_mask)
                tl.store(tcoef_ptr + e * 2 + 1, w[c] * a, cell_mask)


@triton.autotune(**_tuning("segment_sum", "src_ptr", ["D", "COEF"]))
@_blocks("segment_sum")
@triton.jit
def _segment_sum_kernel(
    starts_ptr,  # (R + 1,) first sorted entry of each target row; int64
    order_ptr,  # (E,) entry ids sorted (stably) by target row; int32 or int64
    tcoef_ptr,  # (E, 2) per-entry scalars
    src_ptr,  # (P, D) source rows: query or dO
    out_ptr,  # (R, D) out: map gradient
    R,
    D,
    ENTRIES_PER_CELL,  # 4 * N: entry e belongs to source cell e // ENTRIES_PER_CELL
    P_BUCKET,
    COEF: tl.constexpr,  # 0: key map (query source), 1: value map (dO source)
    TILE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Deterministic ``out[r] = sum_{e -> r} tcoef[e] * src[cell(e)]`` in sorted order.
    Grid ``(cdiv(R, BLOCK_R), cdiv(D, BLOCK_D))``."""
    ACC: tl.constexpr = tcoef_ptr.dtype.element_ty
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    start = tl.load(starts_ptr + rows, mask=row_mask, other=0)
    count = tl.load(starts_ptr + rows + 1, mask=row_mask, other=0) - start
    acc = tl.zeros([BLOCK_R, BLOCK_D], ACC)
    for t in range(0, tl.max(count, axis=0)):
        live = t < count
        e = tl.load(order_ptr + start + t, mask=live, other=0)
        c = tl.load(tcoef_ptr + e * 2 + COEF, mask=live, other=0.0)
        acc += c[:, None] * load_rows(src_ptr, e // ENTRIES_PER_CELL, live, d, d_mask, D, ACC)
    store_rows(out_ptr, rows, row_mask, d, d_mask, D, acc)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _new(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer every element of which a kernel must write. With
    DDSM_POISON_OUTPUTS=1 it starts as NaN (integers: 0, which sends a forgotten
    entry, with its NaN coefficients, to map row 0), so an unwritten element shows."""
    if os.environ.get("DDSM_POISON_OUTPUTS", "0") == "1":
        poison = float("nan") if dtype.is_floating_point else 0
        return torch.full(shape, poison, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class _Dims:
    """Sizes of one call: P cells on an (H, W) grid of G heads, widths, window side."""

    P: int
    H: int
    W: int
    G: int
    DK: int
    DV: int
    KSIZE: int

    @staticmethod
    def of(query: torch.Tensor, value: torch.Tensor, offsets: torch.Tensor) -> _Dims:
        B, H, W, G, DK = query.shape
        P = B * H * W * G
        if P >= 2**31:  # cell coordinates are computed in 32 bits (cell_coords)
            raise ValueError(
                f"query: expected fewer than 2**31 cells B*H*W*G, got {P} (shape "
                f"{tuple(query.shape)}); split the batch"
            )
        return _Dims(P, H, W, G, DK, value.shape[-1], math.isqrt(offsets.shape[-2]))

    @property
    def N(self) -> int:
        return self.KSIZE * self.KSIZE

    def args(self, dilation: int, *, keys: bool = True) -> tuple[int, ...]:
        """The size arguments, in kernel order (``keys=False``: no DK, for the Dv-split
        kernel)."""
        widths = (self.DK, self.DV) if keys else (self.DV,)
        return (self.P, self.H, self.W, self.G, *widths, self.KSIZE, dilation, size_bucket(self.P))

    def cells_grid(self, meta: dict) -> tuple[int, ...]:
        return (triton.cdiv(self.P, meta["BLOCK_P"]),)

    def wide_grid(self, meta: dict) -> tuple[int, ...]:
        return (triton.cdiv(self.P, meta["BLOCK_P"]), triton.cdiv(self.DV, meta["BLOCK_DV"]))


def _scale(scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The scale as a one-element tensor in the accumulation dtype: Triton passes Python
    floats as float32, which would round a float64 scale and overflow one above 3.4e38.
    ``torch.full`` fills it on the device without a host-to-device copy."""
    return torch.full((1,), scale, dtype=dtype, device=device)


def _logits(q, k, v, off, scale, dims: _Dims, dilation: int) -> tuple[torch.Tensor, ...]:
    """Wide Dv: the (P, N) logits and (P,) log-sum-exp, values untouched."""
    acc = scale.dtype
    logits = _new((dims.P, dims.N), acc, q.device)
    lse = _new((dims.P,), acc, q.device)
    _dsa_fwd_kernel[dims.cells_grid](
        q, k, v, off, scale, v, lse, logits, *dims.args(dilation), VALUES=False
    )
    return logits, lse


def _forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    dilation: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    dims = _Dims.of(query, value, offsets)
    acc = _acc_dtype(query.dtype)
    out = _new(value.shape, value.dtype, value.device)
    if dims.P == 0:
        return out, _new(query.shape[:4], acc, query.device)
    q, k, v, off = (t.contiguous() for t in (query, key, value, offsets))
    s = _scale(scale, acc, q.device)
    if wide(dims.DV):
        logits, lse = _logits(q, k, v, off, s, dims, dilation)
        unused = _new((1,), acc, q.device)  # the backward-only pointers
        _dsa_wide_kernel[dims.wide_grid](
            v, off, logits, lse, unused, out, unused, unused, *dims.args(dilation, keys=False),
            BACKWARD=False, ATOMICS=False,
        )  # fmt: skip
    else:
        lse = _new((dims.P,), acc, q.device)
        _dsa_fwd_kernel[dims.cells_grid](
            q, k, v, off, s, out, lse, lse, *dims.args(dilation), VALUES=True
        )
    return out, lse.view(query.shape[:4])


def _value_sums(q, k, v, off, do, s, dims: _Dims, dilation: int, dv_acc, unused):
    """Wide Dv backward, value side: the dvalue atomics into ``dv_acc`` (none if it is
    ``unused``) and the per-sample (dA_n, <dO, dV_n/dy>, <dO, dV_n/dx>) summed over the
    Dv tiles in a fixed order, (P, N, 3)."""
    logits, lse = _logits(q, k, v, off, s, dims, dilation)
    tiles = None

    def grid(meta):
        nonlocal tiles
        tiles = dims.wide_grid(meta)
        return tiles

    # Partial sums per Dv tile, sized for the smallest BLOCK_DV of any config; the
    # launch writes the first cdiv(DV, BLOCK_DV) of them.
    most = triton.cdiv(dims.DV, min(c.kwargs["BLOCK_DV"] for c in _dsa_wide_kernel.configs))
    part = _new((most, dims.P, dims.N, 3), s.dtype, v.device)
    _dsa_wide_kernel[grid](
        v, off, logits, lse, do, unused, dv_acc, part, *dims.args(dilation, keys=False),
        BACKWARD=True, ATOMICS=dv_acc is not unused,
    )  # fmt: skip
    return part[: tiles[1]].sum(0)


def _backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    lse: torch.Tensor,
    dilation: int,
    scale: float,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dims = _Dims.of(query, value, offsets)
    dev, acc = query.device, lse.dtype
    dq = _new(query.shape, query.dtype, dev)
    doff = _new(offsets.shape, offsets.dtype, dev)
    if dims.P == 0:
        return dq, torch.zeros_like(key), torch.zeros_like(value), doff
    q, k, v, off, do = (t.contiguous() for t in (query, key, value, offsets, grad_out))
    s = _scale(scale, acc, dev)
    P, N = dims.P, dims.N
    unused = _new((1,), acc, dev)  # pointers a launch never touches
    if deterministic:
        # Targets are map rows, with P as the out-of-bounds sentinel, and entry ids run
        # to 4 N P: int32 when that fits (sorts faster, divides without a call).
        idx = torch.int32 if 4 * N * P < 2**31 else torch.int64
        tgt, tcoef = _new((P, N, 4), idx, dev), _new((P, N, 4, 2), acc, dev)
        dk_acc = dv_acc = unused
    else:
        tgt, tcoef = unused, unused
        # Atomics accumulate in the accumulation dtype (bf16 atomics do not exist).
        dk_acc = torch.zeros(key.shape, dtype=acc, device=dev)
        dv_acc = torch.zeros(value.shape, dtype=acc, device=dev)
    vsum = unused
    value_sums = wide(dims.DV)
    if value_sums:
        vsum = _value_sums(q, k, v, off, do, s, dims, dilation, dv_acc, unused)
    _dsa_bwd_kernel[dims.cells_grid](
        q, k, v, off, s, lse, do, vsum, _new((P, N, 6), acc, dev), dq, doff,
        dk_acc, unused if value_sums else dv_acc, tgt, tcoef,
        *dims.args(dilation), VALUE_SUMS=value_sums, ATOMICS=not deterministic,
    )  # fmt: skip
    if not deterministic:
        return dq, dk_acc.to(key.dtype), dv_acc.to(value.dtype), doff

    sorted_tgt, order = torch.sort(tgt.flatten(), stable=True)
    starts = torch.searchsorted(sorted_tgt, torch.arange(P + 1, device=dev, dtype=idx))
    # Entry ids in 32 bits when they fit: the kernel divides them by 4 N.
    order = order.to(idx)
    dk, dv = _new(key.shape, key.dtype, dev), _new(value.shape, value.dtype, dev)
    for src, dmap, D, coef in ((q, dk, dims.DK, 0), (do, dv, dims.DV, 1)):
        grid = lambda meta, D=D: (triton.cdiv(P, meta["BLOCK_R"]), triton.cdiv(D, meta["BLOCK_D"]))  # noqa: E731
        _segment_sum_kernel[grid](
            starts, order, tcoef, src, dmap, P, D, 4 * N, size_bucket(P), COEF=coef
        )
    return dq, dk, dv, doff


# --------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------


@torch.library.custom_op("ddsm::dsa_forward", mutates_args=())
def dsa_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    dilation: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``out`` (B, H, W, G, Dv) and the log-sum-exp (B, H, W, G) in the
    accumulation dtype."""
    return _forward(query, key, value, offsets, dilation, scale)


@dsa_forward.register_fake
def _(query, key, value, offsets, dilation, scale):
    return value.new_empty(value.shape), query.new_empty(
        query.shape[:4], dtype=_acc_dtype(query.dtype)
    )


@torch.library.custom_op("ddsm::dsa_backward", mutates_args=())
def dsa_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    lse: torch.Tensor,
    dilation: int,
    scale: float,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``dsa_forward``'s ``out`` for query, key, value and offsets. The
    forward output is not needed: Delta = <dO, out> is rebuilt as sum_n A_n dA_n."""
    return _backward(grad_out, query, key, value, offsets, lse, dilation, scale, deterministic)


@dsa_backward.register_fake
def _(grad_out, query, key, value, offsets, lse, dilation, scale, deterministic):
    # Contiguous, like the real gradients: empty_like would copy the strides of
    # non-contiguous inputs and mislead the compiler.
    return tuple(t.new_empty(t.shape) for t in (query, key, value, offsets))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, offsets, dilation, scale = inputs
    _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, key, value, offsets, lse)
    ctx.dilation, ctx.scale = dilation, scale


def _backward_rule(ctx, grad_out, grad_lse):
    query, key, value, offsets, lse = ctx.saved_tensors
    grads = torch.ops.ddsm.dsa_backward(
        grad_out, query, key, value, offsets, lse,
        ctx.dilation, ctx.scale, torch.are_deterministic_algorithms_enabled(),
    )  # fmt: skip
    return (*grads, None, None)


dsa_forward.register_autograd(_backward_rule, setup_context=_setup_context)


def dynamic_sample_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    dilation: int,
    scale: float,
) -> torch.Tensor:
    """Triton dynamic sample attention (docs/semantics.md §1), differentiable in all inputs.

    Args:
        query: (B, H, W, G, Dk). key: (B, H, W, G, Dk). value: (B, H, W, G, Dv).
        offsets: (B, H, W, G, N, 2), (dy, dx) in grid cells, N = k*k for odd k.
        dilation: spacing of the k x k base window, in grid cells.
        scale: logit scale (the caller resolves the 1/sqrt(Dk) default); a float64
            scale reaches float64 kernels exactly.

    Inputs share one dtype (float32, float16, bfloat16 or float64) and one device:
    CUDA, or CPU under ``TRITON_INTERPRET=1``. Any strides are accepted: inputs are
    made contiguous here, once, so that autograd saves the very tensors the kernels
    read and the backward copies nothing again.

    Returns:
        out: (B, H, W, G, Dv) in the value dtype.
    """
    inputs = (t.contiguous() for t in (query, key, value, offsets))
    return torch.ops.ddsm.dsa_forward(*inputs, int(dilation), float(scale))[0]


# --------------------------------------------------------------------------------------
# What the library can launch, for bench/kernel_report.py and bench/traffic.py
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelVariant:
    """One launch site: a kernel, the key of its configurations in ``CONFIGS``, the
    element dtype of each pointer argument as a function of the input dtype (``"io"`` =
    input dtype, ``"acc"`` = accumulation dtype, or an explicit torch dtype), the
    compile-time flags it is launched with, the widths (``DK``/``DV``/``D``) it is
    compiled at for the kernel report (its block shape follows from them), and the
    path that launches it: ``"narrow"`` (Dv in one program), ``"wide"`` (Dv split) or
    ``"both"``."""

    name: str
    kernel: Callable
    config_key: str
    pointers: dict[str, str | torch.dtype]
    flags: dict[str, object] = field(default_factory=dict)
    widths: tuple[dict[str, int], ...] = ({"DK": 64, "DV": 64},)
    path: str = "narrow"

    def configs(self, dtype: torch.dtype) -> list[triton.Config]:
        """Every configuration this launch site can run with for inputs of ``dtype``."""
        return configs_for(self.config_key, dtype)

    def pointer_dtypes(self, dtype: torch.dtype) -> dict[str, torch.dtype]:
        pick = {"io": dtype, "acc": _acc_dtype(dtype)}
        return {k: pick.get(v, v) for k, v in self.pointers.items()}

    def constexprs(
        self, config: triton.Config, widths: dict[str, int], dtype: torch.dtype
    ) -> dict[str, object]:
        """The compile-time arguments of a launch with ``config`` at ``widths``."""
        args = {**config.kwargs, **self.flags, **widths}
        blocks = block_sizes(self.config_key, args)
        return {**config.kwargs, **self.flags, **blocks}


_ACC_OUT = {"scale_ptr": "acc", "lse_ptr": "acc"}
_FWD = {**dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "off_ptr", "out_ptr"), "io"), **_ACC_OUT}
_BWD = {
    **dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "off_ptr", "do_ptr", "dq_ptr", "doff_ptr"), "io"),
    **dict.fromkeys(("vsum_ptr", "stash_ptr", "dk_ptr", "dv_ptr", "tcoef_ptr"), "acc"),
    **_ACC_OUT,
    "tgt_ptr": torch.int32,
}
_WIDE = {
    **dict.fromkeys(("v_ptr", "off_ptr", "do_ptr", "out_ptr"), "io"),
    **dict.fromkeys(("logit_ptr", "lse_ptr", "dv_ptr", "part_ptr"), "acc"),
}
# Report widths: the narrowest and widest whole-row heads, and the channel branch.
_NARROW = ({"DK": 16, "DV": 16}, {"DK": 256, "DV": 256})
_CHANNEL = ({"DK": 64, "DV": 2048},)

KERNEL_VARIANTS: tuple[KernelVariant, ...] = (
    KernelVariant(
        "dsa_fwd", _dsa_fwd_kernel, "dsa_fwd", {**_FWD, "logit_ptr": "acc"}, {"VALUES": True},
        _NARROW,
    ),
    KernelVariant(
        "dsa_fwd[logits]", _dsa_fwd_kernel, "dsa_fwd", {**_FWD, "logit_ptr": "acc"},
        {"VALUES": False}, _CHANNEL, "wide",
    ),
    KernelVariant(
        "dsa_bwd[atomic]", _dsa_bwd_kernel, "dsa_bwd", _BWD,
        {"VALUE_SUMS": False, "ATOMICS": True}, _NARROW,
    ),
    KernelVariant(
        "dsa_bwd[deterministic]", _dsa_bwd_kernel, "dsa_bwd", _BWD,
        {"VALUE_SUMS": False, "ATOMICS": False},
    ),
    KernelVariant(
        "dsa_bwd[value sums]", _dsa_bwd_kernel, "dsa_bwd", _BWD,
        {"VALUE_SUMS": True, "ATOMICS": True}, _CHANNEL, "wide",
    ),
    KernelVariant(
        "dsa_bwd[value sums, deterministic]", _dsa_bwd_kernel, "dsa_bwd", _BWD,
        {"VALUE_SUMS": True, "ATOMICS": False}, _CHANNEL, "wide",
    ),
    *(
        KernelVariant(
            f"dsa_wide[{label}]", _dsa_wide_kernel, "dsa_wide", _WIDE,
            {"BACKWARD": backward, "ATOMICS": atomics}, _CHANNEL, "wide",
        )
        for label, backward, atomics in (
            ("forward", False, False),
            ("backward atomic", True, True),
            ("backward deterministic", True, False),
        )
    ),
    KernelVariant(
        "segment_sum", _segment_sum_kernel, "segment_sum",
        {
            "starts_ptr": torch.int64,
            "order_ptr": torch.int32,
            "tcoef_ptr": "acc",
            "src_ptr": "io",
            "out_ptr": "io",
        },
        {"COEF": 0}, ({"D": 64},), "both",
    ),
)  # fmt: skip
