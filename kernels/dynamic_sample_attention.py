"""Dynamic sample attention (SPEC section 1) as fused Triton kernels.

Every cell attends over ``N = k*k`` bilinearly sampled keys and values:

    l_n = scale * <q, K_n>,   A = softmax_n(l),   out = sum_n A_n V_n.

Forward (``_dsa_fwd_kernel``): one program owns ``BLOCK_P`` cells and ``BLOCK_DV``
value channels. For each sample it computes the position and bilinear weights once,
gathers the four key corners chunk by chunk over ``Dk`` to get the logit, gathers the
four value corners and folds them into an online softmax kept in registers. It writes
``out`` and the per-cell log-sum-exp (natural log, accumulation dtype) and nothing of
size ``N x D``. Wide value maps (the channel branch: ``Dv = h'*w'`` in the thousands on
a tiny grid) are tiled over the second launch axis; each tile recomputes the cheap
logits instead of sharing them through memory.

Backward, recomputing positions and logits from the saved log-sum-exp:

1. ``_dsa_bwd_scores_kernel`` (per cell): ``Delta = <dO, out>``, then per sample the
   per-corner dots ``<q, key_c>`` and ``<dO, value_c>``, from which follow
   ``A_n``, ``dA_n = <dO, V_n>``, ``dl_n = A_n (dA_n - Delta)`` and the offset
   gradient. It writes ``doffsets`` and two scalars per sample: ``scale * dl_n`` (what
   the key map and the query receive) and ``A_n`` (what the value map receives).
2. ``_dsa_bwd_spread_kernel`` (per cell and channel tile): ``dquery = sum_n
   scale*dl_n K_n`` by gathering, and the key / value map gradients by scattering
   ``w_c * coef_n * src`` (``src`` = query or dO) into the four corners with atomics.
3. Deterministic mode (``torch.are_deterministic_algorithms_enabled()``): no atomics
   anywhere. The scores kernel also writes, per (cell, sample, corner), the target
   map row and the two scalar coefficients; a stable sort by target and a
   ``searchsorted`` give each map row its contributions in a fixed order, and
   ``_segment_sum_kernel`` adds them up. Nothing of size ``N x D`` is stored here
   either: an entry is one index and two scalars.

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

from .bilinear import (
    bilinear_gather,
    bilinear_weight_grads,
    cell_coords,
    corner_dot_sums,
    load_rows,
    sample_corners,
)

__all__ = [
    "CONFIGS",
    "INTERPRETER_CONFIGS",
    "KERNEL_VARIANTS",
    "MIN_LOAD_BYTES",
    "TILE_BYTES",
    "KernelVariant",
    "configs_for",
    "dynamic_sample_attention",
]

# Read once, at import: ``@triton.jit`` decides between compiling and interpreting at
# decoration time, so this is what the kernels below were built for.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# --------------------------------------------------------------------------------------
# Launch configurations: the one place that lists every block shape the library can
# launch. ``bench/kernel_report.py`` compiles each of them for sm_80 / sm_90.
# --------------------------------------------------------------------------------------
_C = triton.Config

# Gathers address every element through a 64-bit pointer, so registers grow fast with
# the tile: 32 bytes of accumulator per thread (8 fp32, 4 fp64 tile elements) compile
# without spills, twice that does not. Scattering is worse on sm_80, which has no vector
# float atomics: one address per element. TILE_BYTES caps, per kernel, the bytes of one
# ``rows x max(channel blocks)`` accumulation tile held by each thread; MIN_LOAD_BYTES
# keeps each thread's share of a row (hence its widest load) at 64 bits or more.
TILE_BYTES = {"dsa_fwd": 32, "dsa_bwd_scores": 32, "dsa_bwd_spread": 16, "segment_sum": 128}
MIN_LOAD_BYTES = 8

CONFIGS: dict[str, list[triton.Config]] = {
    "dsa_fwd": [
        _C({"BLOCK_P": 16, "BLOCK_DK": 64, "BLOCK_DV": 64}, num_warps=4, num_stages=1),
        # Wide values (the channel branch) amortise the recomputed logits.
        _C({"BLOCK_P": 8, "BLOCK_DK": 64, "BLOCK_DV": 128}, num_warps=4, num_stages=1),
        _C({"BLOCK_P": 16, "BLOCK_DK": 64, "BLOCK_DV": 64}, num_warps=8, num_stages=1),
    ],
    "dsa_bwd_scores": [
        _C({"BLOCK_P": 16, "BLOCK_DK": 64, "BLOCK_DV": 64}, num_warps=4, num_stages=1),
        _C({"BLOCK_P": 16, "BLOCK_DK": 64, "BLOCK_DV": 64}, num_warps=8, num_stages=1),
    ],
    "dsa_bwd_spread": [
        _C({"BLOCK_P": 16, "BLOCK_D": 64}, num_warps=8, num_stages=1),
        _C({"BLOCK_P": 4, "BLOCK_D": 64}, num_warps=4, num_stages=1),
    ],
    "segment_sum": [
        _C({"BLOCK_R": 32, "BLOCK_D": 64}, num_warps=4, num_stages=1),
    ],
}

# The interpreter cannot autotune (no driver to time on) and pays a large fixed cost
# per program and per operation, so it runs exactly one configuration with big tiles.
INTERPRETER_CONFIGS: dict[str, triton.Config] = {
    "dsa_fwd": _C({"BLOCK_P": 128, "BLOCK_DK": 64, "BLOCK_DV": 256}),
    "dsa_bwd_scores": _C({"BLOCK_P": 128, "BLOCK_DK": 64, "BLOCK_DV": 256}),
    "dsa_bwd_spread": _C({"BLOCK_P": 128, "BLOCK_D": 256}),
    "segment_sum": _C({"BLOCK_R": 128, "BLOCK_D": 256}),
}


def fits(name: str, config: triton.Config, dtype: torch.dtype) -> bool:
    """Whether ``config`` of kernel ``name`` suits inputs of ``dtype``: within its
    register budget (TILE_BYTES) and with loads of at least MIN_LOAD_BYTES."""
    kw = config.kwargs
    rows = kw.get("BLOCK_P", kw.get("BLOCK_R"))
    channels = max(v for k, v in kw.items() if k.startswith("BLOCK_D"))
    per_thread = rows * channels // (32 * config.num_warps)
    return (
        per_thread * _acc_dtype(dtype).itemsize <= TILE_BYTES[name]
        and per_thread * dtype.itemsize >= MIN_LOAD_BYTES
    )


def configs_for(name: str, dtype: torch.dtype) -> list[triton.Config]:
    """The configurations kernel ``name`` may launch with on a GPU for ``dtype``."""
    return [c for c in CONFIGS[name] if fits(name, c, dtype)]


def _prune(name: str, dtype_arg: str):
    """Autotune pruner: keep the configs that suit this launch's dtype (see ``fits``)."""

    def prune(configs, named_args, **kwargs):
        return [c for c in configs if fits(name, c, named_args[dtype_arg].dtype)]

    return {"early_config_prune": prune}


def _configs(name: str) -> list[triton.Config]:
    return [INTERPRETER_CONFIGS[name]] if INTERPRET else CONFIGS[name]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------


@triton.autotune(
    configs=_configs("dsa_fwd"),
    key=["DK", "DV", "KSIZE"],
    prune_configs_by=_prune("dsa_fwd", "q_ptr"),
)
@triton.jit
def _dsa_fwd_kernel(
    q_ptr,  # (P, DK) queries, one row per cell
    k_ptr,  # (P, DK) key map rows
    v_ptr,  # (P, DV) value map rows
    off_ptr,  # (P, N, 2) offsets (dy, dx) in grid cells
    out_ptr,  # (P, DV) output, value dtype
    lse_ptr,  # (P,) log-sum-exp of the logits; its dtype is the accumulation dtype
    P,  # number of cells B*H*W*G
    H,
    W,
    G,
    DK,
    DV,
    KSIZE,  # window side k, N = k*k
    dilation,
    scale_hi,  # softmax scale = scale_hi + scale_lo (two fp32 halves, see _split)
    scale_lo,
    BLOCK_P: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Grid ``(cdiv(P, BLOCK_P), cdiv(DV, BLOCK_DV))``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    cells = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    cell_mask = cells < P
    i, j, base = cell_coords(cells, H, W, G)
    dv = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_mask = dv < DV
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)

    m = tl.full([BLOCK_P], float("-inf"), ACC)  # running max of the logits
    s = tl.zeros([BLOCK_P], ACC)  # running sum of exp(l - m)
    acc = tl.zeros([BLOCK_P, BLOCK_DV], ACC)  # running sum of exp(l - m) * V_n
    for n in range(KSIZE * KSIZE):
        r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, _fy, _fx = sample_corners(
            off_ptr, cells, cell_mask, n, i, j, base, H, W, G, KSIZE, dilation, ACC
        )

        h00, h01, h10, h11 = corner_dot_sums(
            q_ptr, k_ptr, cells, cell_mask,
            r00, r01, r10, r11,
            m00, m01, m10, m11,
            DK, BLOCK_DK, ACC,
        )  # fmt: skip
        logit = scale * (w00 * h00 + w01 * h01 + w10 * h10 + w11 * h11)

        v = bilinear_gather(
            v_ptr, r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, dv, dv_mask, DV
        )
        m_new = tl.maximum(m, logit)
        alpha = tl.exp(m - m_new)  # rescales the old sums; exp(-inf) = 0 on the first sample
        p = tl.exp(logit - m_new)
        acc = acc * alpha[:, None] + p[:, None] * v
        s = s * alpha + p
        m = m_new

    out = acc / s[:, None]
    out_ptrs = out_ptr + cells[:, None] * DV + dv[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), cell_mask[:, None] & dv_mask[None, :])
    # Every Dv tile computes the same log-sum-exp; the first one writes it.
    if tl.program_id(1) == 0:
        tl.store(lse_ptr + cells, m + tl.log(s), cell_mask)


@triton.autotune(
    configs=_configs("dsa_bwd_scores"),
    key=["DK", "DV", "KSIZE", "WRITE_ENTRIES"],
    prune_configs_by=_prune("dsa_bwd_scores", "q_ptr"),
)
@triton.jit
def _dsa_bwd_scores_kernel(
    q_ptr,  # (P, DK)
    k_ptr,  # (P, DK)
    v_ptr,  # (P, DV)
    off_ptr,  # (P, N, 2)
    out_ptr,  # (P, DV) forward output
    lse_ptr,  # (P,) forward log-sum-exp
    do_ptr,  # (P, DV) incoming gradient of out
    doff_ptr,  # (P, N, 2) out: offset gradient, offsets dtype
    coef_ptr,  # (P, N, 2) out: (scale * dl_n, A_n); its dtype is the accumulation dtype
    tgt_ptr,  # (P, N, 4) out if WRITE_ENTRIES: map row of each corner, P if out of bounds
    tcoef_ptr,  # (P, N, 4, 2) out if WRITE_ENTRIES: w_c * (scale * dl_n, A_n)
    P,
    H,
    W,
    G,
    DK,
    DV,
    KSIZE,
    dilation,
    scale_hi,
    scale_lo,
    BLOCK_P: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    WRITE_ENTRIES: tl.constexpr,
):
    """Per-sample scalars of the backward. Grid ``(cdiv(P, BLOCK_P),)``."""
    ACC: tl.constexpr = coef_ptr.dtype.element_ty
    cells = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    cell_mask = cells < P
    i, j, base = cell_coords(cells, H, W, G)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    lse = tl.load(lse_ptr + cells, mask=cell_mask, other=0.0).to(ACC)

    # Delta = <dO, out> = sum_n A_n dA_n: the softmax Jacobian's rank-one term.
    delta = tl.zeros([BLOCK_P], ACC)
    for d0 in range(0, DV, BLOCK_DV):
        dv = d0 + tl.arange(0, BLOCK_DV)
        dv_mask = dv < DV
        do = load_rows(do_ptr, cells, cell_mask, dv, dv_mask, DV, ACC)
        delta += tl.sum(do * load_rows(out_ptr, cells, cell_mask, dv, dv_mask, DV, ACC), axis=1)

    N = KSIZE * KSIZE
    for n in range(N):
        r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, fy, fx = sample_corners(
            off_ptr, cells, cell_mask, n, i, j, base, H, W, G, KSIZE, dilation, ACC
        )
        gy00, gy01, gy10, gy11, gx00, gx01, gx10, gx11 = bilinear_weight_grads(fy, fx)

        # <q, key_c> and <dO, value_c> per corner c; out-of-bounds corners give 0.
        k00, k01, k10, k11 = corner_dot_sums(
            q_ptr, k_ptr, cells, cell_mask,
            r00, r01, r10, r11,
            m00, m01, m10, m11,
            DK, BLOCK_DK, ACC,
        )  # fmt: skip
        v00, v01, v10, v11 = corner_dot_sums(
            do_ptr, v_ptr, cells, cell_mask,
            r00, r01, r10, r11,
            m00, m01, m10, m11,
            DV, BLOCK_DV, ACC,
        )  # fmt: skip

        a = tl.exp(scale * (w00 * k00 + w01 * k01 + w10 * k10 + w11 * k11) - lse)
        da = w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11
        gk = scale * a * (da - delta)  # scale * dl_n
        # d/dp of l_n and of <dO, V_n> are the same corner sums with dw/dp weights.
        doff_y = gk * (gy00 * k00 + gy01 * k01 + gy10 * k10 + gy11 * k11) + a * (
            gy00 * v00 + gy01 * v01 + gy10 * v10 + gy11 * v11
        )
        doff_x = gk * (gx00 * k00 + gx01 * k01 + gx10 * k10 + gx11 * k11) + a * (
            gx00 * v00 + gx01 * v01 + gx10 * v10 + gx11 * v11
        )
        sn = (cells * N + n) * 2
        tl.store(doff_ptr + sn, doff_y.to(doff_ptr.dtype.element_ty), cell_mask)
        tl.store(doff_ptr + sn + 1, doff_x.to(doff_ptr.dtype.element_ty), cell_mask)
        tl.store(coef_ptr + sn, gk, cell_mask)
        tl.store(coef_ptr + sn + 1, a, cell_mask)
        if WRITE_ENTRIES:
            e = (cells * N + n) * 4
            _store_entry(tgt_ptr, tcoef_ptr, e, r00, m00, w00, gk, a, P, cell_mask)
            _store_entry(tgt_ptr, tcoef_ptr, e + 1, r01, m01, w01, gk, a, P, cell_mask)
            _store_entry(tgt_ptr, tcoef_ptr, e + 2, r10, m10, w10, gk, a, P, cell_mask)
            _store_entry(tgt_ptr, tcoef_ptr, e + 3, r11, m11, w11, gk, a, P, cell_mask)


@triton.jit
def _store_entry(tgt_ptr, tcoef_ptr, e, row, row_mask, w, gk, a, P, cell_mask):
    """One (cell, sample, corner) contribution for the deterministic reduction: the
    target row (``P``, past every real row, when out of bounds, so it sorts last) and
    the scalars that multiply the source cell's query and dO."""
    tl.store(tgt_ptr + e, tl.where(row_mask, row, P).to(tgt_ptr.dtype.element_ty), cell_mask)
    tl.store(tcoef_ptr + e * 2, w * gk, cell_mask)
    tl.store(tcoef_ptr + e * 2 + 1, w * a, cell_mask)


@triton.autotune(
    configs=_configs("dsa_bwd_spread"),
    key=["D", "KSIZE", "SCATTER", "GATHER"],
    reset_to_zero=["dmap_ptr"],
    prune_configs_by=_prune("dsa_bwd_spread", "src_ptr"),
)
@triton.jit
def _dsa_bwd_spread_kernel(
    src_ptr,  # (P, D) per-cell source: query (key side) or dO (value side)
    map_ptr,  # (P, D) key map, gathered for dquery when GATHER
    off_ptr,  # (P, N, 2)
    coef_ptr,  # (P, N, 2) (scale * dl_n, A_n) from the scores kernel
    dmap_ptr,  # (P, D) accumulation-dtype map gradient, += by atomics when SCATTER
    dsrc_ptr,  # (P, D) out when GATHER: dquery = sum_n coef_n * K_n
    P,
    H,
    W,
    G,
    D,
    KSIZE,
    dilation,
    COEF: tl.constexpr,  # which coefficient: 0 = scale * dl_n (key side), 1 = A_n (value)
    SCATTER: tl.constexpr,
    GATHER: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Channel-wise backward. Grid ``(cdiv(P, BLOCK_P), cdiv(D, BLOCK_D))``.

    Key side: ``dkey[corner] += w_c * scale * dl_n * q`` and ``dq = sum_n scale*dl_n
    K_n``. Value side: ``dvalue[corner] += w_c * A_n * dO``.
    """
    ACC: tl.constexpr = coef_ptr.dtype.element_ty
    cells = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    cell_mask = cells < P
    i, j, base = cell_coords(cells, H, W, G)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    src = load_rows(src_ptr, cells, cell_mask, d, d_mask, D, ACC)
    acc = tl.zeros([BLOCK_P, BLOCK_D], ACC)

    N = KSIZE * KSIZE
    for n in range(N):
        r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, _fy, _fx = sample_corners(
            off_ptr, cells, cell_mask, n, i, j, base, H, W, G, KSIZE, dilation, ACC
        )
        c = tl.load(coef_ptr + (cells * N + n) * 2 + COEF, mask=cell_mask, other=0.0)
        if SCATTER:
            _scatter_add(dmap_ptr, r00, m00, (w00 * c)[:, None] * src, d, d_mask, D)
            _scatter_add(dmap_ptr, r01, m01, (w01 * c)[:, None] * src, d, d_mask, D)
            _scatter_add(dmap_ptr, r10, m10, (w10 * c)[:, None] * src, d, d_mask, D)
            _scatter_add(dmap_ptr, r11, m11, (w11 * c)[:, None] * src, d, d_mask, D)
        if GATHER:
            acc += c[:, None] * bilinear_gather(
                map_ptr, r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, d, d_mask, D
            )
    if GATHER:
        ptrs = dsrc_ptr + cells[:, None] * D + d[None, :]
        tl.store(ptrs, acc.to(dsrc_ptr.dtype.element_ty), cell_mask[:, None] & d_mask[None, :])


@triton.jit
def _scatter_add(ptr, rows, row_mask, val, d, d_mask, D):
    # Relaxed: the adds only need to be atomic, not ordered against other memory.
    ptrs = ptr + rows[:, None] * D + d[None, :]
    tl.atomic_add(ptrs, val, mask=row_mask[:, None] & d_mask[None, :], sem="relaxed")


@triton.autotune(
    configs=_configs("segment_sum"),
    key=["D", "COEF"],
    prune_configs_by=_prune("segment_sum", "src_ptr"),
)
@triton.jit
def _segment_sum_kernel(
    starts_ptr,  # (R + 1,) first sorted entry of each target row; int64
    order_ptr,  # (E,) entry ids sorted (stably) by target row; int64
    tcoef_ptr,  # (E, 2) per-entry scalars
    src_ptr,  # (P, D) source rows: query or dO
    out_ptr,  # (R, D) out: map gradient
    R,
    D,
    ENTRIES_PER_CELL,  # 4 * N: entry e belongs to source cell e // ENTRIES_PER_CELL
    COEF: tl.constexpr,  # 0: key map (query source), 1: value map (dO source)
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
    ptrs = out_ptr + rows[:, None] * D + d[None, :]
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), row_mask[:, None] & d_mask[None, :])


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _split(scale: float) -> tuple[float, float]:
    """Triton passes Python floats as fp32; hi + lo carries a float64 scale to ~1e-14."""
    hi = float(torch.tensor(scale, dtype=torch.float32))
    return hi, float(torch.tensor(scale - hi, dtype=torch.float32))


def _new(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer every element of which a kernel must write. With
    DDSM_POISON_OUTPUTS=1 it starts as NaN (integers: 0, which sends a forgotten
    entry, with its NaN coefficients, to map row 0), so an unwritten element shows."""
    if os.environ.get("DDSM_POISON_OUTPUTS", "0") == "1":
        poison = float("nan") if dtype.is_floating_point else 0
        return torch.full(shape, poison, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        if INTERPRET:
            raise RuntimeError(
                "ddsm_triton kernels were imported with TRITON_INTERPRET=1 and only run "
                "CPU tensors in this process; got a CUDA tensor"
            )
        return
    if t.device.type == "cpu":
        if not INTERPRET:
            raise RuntimeError(
                "the Triton backend runs CPU tensors only under the Triton interpreter: set "
                "TRITON_INTERPRET=1 before importing ddsm_triton, or move the tensors to CUDA"
            )
        return
    raise RuntimeError(f"the Triton backend needs CUDA tensors, got device {t.device}")


def _dims(query: torch.Tensor, value: torch.Tensor, offsets: torch.Tensor) -> tuple[int, ...]:
    B, H, W, G, DK = query.shape
    N = offsets.shape[-2]
    return B * H * W * G, H, W, G, DK, value.shape[-1], math.isqrt(N)


def _forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    dilation: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_device(query)
    P, H, W, G, DK, DV, KSIZE = _dims(query, value, offsets)
    out = _new(value.shape, value.dtype, value.device)
    lse = _new(query.shape[:4], _acc_dtype(query.dtype), query.device)
    if P == 0:
        return out, lse
    q, k, v, off = (t.contiguous() for t in (query, key, value, offsets))
    grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(DV, meta["BLOCK_DV"]))  # noqa: E731
    _dsa_fwd_kernel[grid](
        q, k, v, off, out, lse, P, H, W, G, DK, DV, KSIZE, dilation, *_split(scale)
    )
    return out, lse


def _backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dilation: int,
    scale: float,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_device(query)
    P, H, W, G, DK, DV, KSIZE = _dims(query, value, offsets)
    N = KSIZE * KSIZE
    dev, acc = query.device, lse.dtype
    dq = _new(query.shape, query.dtype, dev)
    doff = _new(offsets.shape, offsets.dtype, dev)
    if P == 0:
        return dq, torch.zeros_like(key), torch.zeros_like(value), doff
    q, k, v, off, o, do = (t.contiguous() for t in (query, key, value, offsets, out, grad_out))

    coef = _new((P, N, 2), acc, dev)
    if deterministic:
        # Targets are map rows, with P as the out-of-bounds sentinel; int32 sorts faster.
        idx = torch.int32 if P < 2**31 - 1 else torch.int64
        tgt = _new((P, N, 4), idx, dev)
        tcoef = _new((P, N, 4, 2), acc, dev)
    else:
        tgt, tcoef = coef, coef  # unused: WRITE_ENTRIES is off
    _dsa_bwd_scores_kernel[lambda meta: (triton.cdiv(P, meta["BLOCK_P"]),)](
        q, k, v, off, o, lse, do, doff, coef, tgt, tcoef,
        P, H, W, G, DK, DV, KSIZE, dilation, *_split(scale),
        WRITE_ENTRIES=deterministic,
    )  # fmt: skip

    def spread(src, d_src, dmap, D, coef_idx, scatter, gather):
        grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(D, meta["BLOCK_D"]))  # noqa: E731
        _dsa_bwd_spread_kernel[grid](
            src,
            k,
            off,
            coef,
            dmap,
            d_src,
            P,
            H,
            W,
            G,
            D,
            KSIZE,
            dilation,
            COEF=coef_idx,
            SCATTER=scatter,
            GATHER=gather,
        )

    if deterministic:
        spread(q, dq, dq, DK, 0, scatter=False, gather=True)
        sorted_tgt, order = torch.sort(tgt.flatten(), stable=True)
        starts = torch.searchsorted(sorted_tgt, torch.arange(P + 1, device=dev, dtype=idx))
        dk = _new(key.shape, key.dtype, dev)
        dv = _new(value.shape, value.dtype, dev)
        for src, dmap, D, coef_idx in ((q, dk, DK, 0), (do, dv, DV, 1)):
            grid = lambda meta, D=D: (  # noqa: E731
                triton.cdiv(P, meta["BLOCK_R"]),
                triton.cdiv(D, meta["BLOCK_D"]),
            )
            _segment_sum_kernel[grid](starts, order, tcoef, src, dmap, P, D, 4 * N, COEF=coef_idx)
        return dq, dk, dv, doff

    # Atomics accumulate in the accumulation dtype (bf16 atomics do not exist).
    dk_acc = torch.zeros(key.shape, dtype=acc, device=dev)
    dv_acc = torch.zeros(value.shape, dtype=acc, device=dev)
    spread(q, dq, dk_acc, DK, 0, scatter=True, gather=True)
    spread(do, dq, dv_acc, DV, 1, scatter=True, gather=False)
    return dq, dk_acc.to(key.dtype), dv_acc.to(value.dtype), doff


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
    out: torch.Tensor,
    lse: torch.Tensor,
    dilation: int,
    scale: float,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``dsa_forward``'s ``out`` for query, key, value and offsets."""
    return _backward(grad_out, query, key, value, offsets, out, lse, dilation, scale, deterministic)


@dsa_backward.register_fake
def _(grad_out, query, key, value, offsets, out, lse, dilation, scale, deterministic):
    # Contiguous, like the real gradients: empty_like would copy the strides of
    # non-contiguous inputs (views of NCHW conv outputs) and mislead the compiler.
    return tuple(t.new_empty(t.shape) for t in (query, key, value, offsets))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, offsets, dilation, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(query, key, value, offsets, out, lse)
    ctx.dilation, ctx.scale = dilation, scale


def _backward_rule(ctx, grad_out, grad_lse):
    query, key, value, offsets, out, lse = ctx.saved_tensors
    grads = torch.ops.ddsm.dsa_backward(
        grad_out, query, key, value, offsets, out, lse,
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
    """Triton dynamic sample attention (SPEC section 1), differentiable in all inputs.

    Args:
        query: (B, H, W, G, Dk). key: (B, H, W, G, Dk). value: (B, H, W, G, Dv).
        offsets: (B, H, W, G, N, 2), (dy, dx) in grid cells, N = k*k for odd k.
        dilation: spacing of the k x k base window, in grid cells.
        scale: logit scale (the caller resolves the 1/sqrt(Dk) default).

    Inputs share one dtype (float32, float16, bfloat16 or float64) and one device:
    CUDA, or CPU under ``TRITON_INTERPRET=1``. Any strides are accepted.

    Returns:
        out: (B, H, W, G, Dv) in the value dtype.
    """
    return torch.ops.ddsm.dsa_forward(query, key, value, offsets, int(dilation), float(scale))[0]


# --------------------------------------------------------------------------------------
# What the library can launch, for bench/kernel_report.py
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelVariant:
    """One launch site: a kernel, the key of its configurations in ``CONFIGS``, the
    element dtype of each pointer argument as a function of the input dtype (``"io"`` =
    input dtype, ``"acc"`` = accumulation dtype, or an explicit torch dtype) and the
    compile-time flags it is launched with."""

    name: str
    kernel: Callable
    config_key: str
    pointers: dict[str, str | torch.dtype]
    flags: dict[str, object] = field(default_factory=dict)

    def configs(self, dtype: torch.dtype) -> list[triton.Config]:
        """Every configuration this launch site can run with for inputs of ``dtype``."""
        return configs_for(self.config_key, dtype)

    def pointer_dtypes(self, dtype: torch.dtype) -> dict[str, torch.dtype]:
        pick = {"io": dtype, "acc": _acc_dtype(dtype)}
        return {k: pick.get(v, v) for k, v in self.pointers.items()}


_IO6 = dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "off_ptr", "out_ptr"), "io")

KERNEL_VARIANTS: tuple[KernelVariant, ...] = (
    KernelVariant("dsa_fwd", _dsa_fwd_kernel, "dsa_fwd", {**_IO6, "lse_ptr": "acc"}),
    *(
        KernelVariant(
            f"dsa_bwd_scores[{label}]",
            _dsa_bwd_scores_kernel,
            "dsa_bwd_scores",
            {
                **_IO6,
                "lse_ptr": "acc",
                "do_ptr": "io",
                "doff_ptr": "io",
                "coef_ptr": "acc",
                "tgt_ptr": torch.int32,
                "tcoef_ptr": "acc",
            },
            {"WRITE_ENTRIES": det},
        )
        for label, det in (("atomic", False), ("deterministic", True))
    ),
    *(
        KernelVariant(
            f"dsa_bwd_spread[{label}]",
            _dsa_bwd_spread_kernel,
            "dsa_bwd_spread",
            {
                "src_ptr": "io",
                "map_ptr": "io",
                "off_ptr": "io",
                "coef_ptr": "acc",
                "dmap_ptr": "acc",
                "dsrc_ptr": "io",
            },
            {"COEF": coef, "SCATTER": scatter, "GATHER": gather},
        )
        for label, coef, scatter, gather in (
            ("key", 0, True, True),
            ("value", 1, True, False),
            ("dquery", 0, False, True),
        )
    ),
    KernelVariant(
        "segment_sum",
        _segment_sum_kernel,
        "segment_sum",
        {
            "starts_ptr": torch.int64,
            "order_ptr": torch.int64,
            "tcoef_ptr": "acc",
            "src_ptr": "io",
            "out_ptr": "io",
        },
        {"COEF": 0},
    ),
)
