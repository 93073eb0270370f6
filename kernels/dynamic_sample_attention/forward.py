"""Forward kernels: ``out = sum_n softmax_n(l) V_n`` with
``l_n = clamp(scale * <q, K_n>, -M, M)`` over the ``N = KSIZE**2`` samples of a cell.

One program owns ``BLOCK_P`` cells and all their channels; a row lies within one warp
(``kernels/bilinear.py``). Per sample, one row reduction gives the logit,
``l_n = scale * <q, sum_c w_c K_c>`` (a warp shuffle), and the four value corners the
online-softmax update. ``KSIZE`` is a compile-time constant, so the window costs no
division; the samples run as a loop, not unrolled: unrolled, the compiler hoists every
sample's corner loads (255 registers for bf16 at D = 256, and spills under a 64-register
cap). Nothing of size ``N x D`` is written: the output and the per-cell log-sum-exp,
in the accumulation dtype, for the backward.

``logits_fwd_kernel`` is the key side alone, for wide values: it writes the ``N``
logits and the log-sum-exp of each cell; ``wide.py`` sums the values.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..bilinear import (
    blend_rows,
    cell_tile,
    channels,
    clamp_logit,
    gather_corners,
    load_rows,
    per_cell,
    row_sum,
    sample_corners,
    store_rows,
    zero_rows,
)
from .configs import tuned


@triton.jit
def sample_logit(q, k_ptr, rows, masks, w, dk, DK, scale, ACC: tl.constexpr):
    """``clamp(scale * <q, K_n>)`` of one sample: one reduction of the blended key."""
    key = blend_rows(w, gather_corners(k_ptr, rows, masks, dk, DK, ACC))
    return clamp_logit(scale * row_sum(q * key))


@tuned("dsa_fwd", "q_ptr", ["BUCKET", "KSIZE"])
@triton.jit
def attention_fwd_kernel(
    q_ptr,  # (P, DK) queries, one row per cell
    k_ptr,  # (P, DK) key map rows
    v_ptr,  # (P, DV) value map rows
    offsets_ptr,  # (P, N, 2) offsets (dy, dx) in grid cells
    scale_ptr,  # (1,) logit scale, accumulation dtype (exact for float64)
    out_ptr,  # (P, DV) out: output, value dtype
    lse_ptr,  # (P,) out: log-sum-exp of the logits, accumulation dtype
    P,  # cells B*H*W*G
    H,
    W,
    G,
    DK,
    DV,
    dilation,
    BUCKET,  # autotuner key only (configs.tuning_bucket)
    KSIZE: tl.constexpr,  # window side, N = KSIZE**2
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    CHUNK_K: tl.constexpr,
    CHUNK_V: tl.constexpr,
    VEC: tl.constexpr,
):
    """Grid ``(cdiv(P, BLOCK_P),)``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    cells, cell_mask, i, j, base = cell_tile(P, H, W, G, BLOCK_P)
    dk = channels(0, BLOCK_DK, CHUNK_K, VEC)
    dv = channels(0, BLOCK_DV, CHUNK_V, VEC)
    q = load_rows(q_ptr, cells, cell_mask, dk, DK, ACC)
    scale = tl.load(scale_ptr)
    top = tl.full([BLOCK_P], float("-inf"), ACC)  # running max of the logits
    total = tl.zeros([BLOCK_P], ACC)  # running sum of exp(l_n - top)
    acc = zero_rows(cells, dv, ACC)
    for n in range(KSIZE * KSIZE):
        rows, masks, w, _fy, _fx = sample_corners(
            offsets_ptr, cells, cell_mask, i, j, base, H, W, G, dilation, n, KSIZE, ACC
        )
        logit = sample_logit(q, k_ptr, rows, masks, w, dk, DK, scale, ACC)
        new_top = tl.maximum(top, logit)
        alpha = tl.exp(top - new_top)  # rescales the old sums; 0 on the first sample
        p = tl.exp(logit - new_top)
        total = total * alpha + p
        values = blend_rows(w, gather_corners(v_ptr, rows, masks, dv, DV, ACC))
        acc = acc * per_cell(alpha) + per_cell(p) * values
        top = new_top
    tl.store(lse_ptr + cells, top + tl.log(total), cell_mask)
    store_rows(out_ptr, cells, cell_mask, dv, DV, acc / per_cell(total))


@tuned("dsa_fwd", "q_ptr", ["BUCKET", "KSIZE"])
@triton.jit
def logits_fwd_kernel(
    q_ptr,  # (P, DK)
    k_ptr,  # (P, DK)
    offsets_ptr,  # (P, N, 2)
    scale_ptr,  # (1,) accumulation dtype
    logits_ptr,  # (P, N) out: the logits, accumulation dtype
    lse_ptr,  # (P,) out: their log-sum-exp
    P,
    H,
    W,
    G,
    DK,
    dilation,
    BUCKET,
    KSIZE: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,  # unused: the values are wide.py's
    CHUNK_K: tl.constexpr,
    CHUNK_V: tl.constexpr,
    VEC: tl.constexpr,
):
    """The key side of wide values. Grid ``(cdiv(P, BLOCK_P),)``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    cells, cell_mask, i, j, base = cell_tile(P, H, W, G, BLOCK_P)
    dk = channels(0, BLOCK_DK, CHUNK_K, VEC)
    q = load_rows(q_ptr, cells, cell_mask, dk, DK, ACC)
    scale = tl.load(scale_ptr)
    top = tl.full([BLOCK_P], float("-inf"), ACC)
    total = tl.zeros([BLOCK_P], ACC)
    for n in range(KSIZE * KSIZE):
        rows, masks, w, _fy, _fx = sample_corners(
            offsets_ptr, cells, cell_mask, i, j, base, H, W, G, dilation, n, KSIZE, ACC
        )
        logit = sample_logit(q, k_ptr, rows, masks, w, dk, DK, scale, ACC)
        tl.store(logits_ptr + cells * (KSIZE * KSIZE) + n, logit, cell_mask)
        new_top = tl.maximum(top, logit)
        total = total * tl.exp(top - new_top) + tl.exp(logit - new_top)
        top = new_top
    tl.store(lse_ptr + cells, top + tl.log(total), cell_mask)
