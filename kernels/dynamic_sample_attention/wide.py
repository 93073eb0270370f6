"""The value side of wide values (the channel branch: ``Dv = h'*w'`` in the thousands on
a grid of a few hundred cells), split over a second grid axis of ``BLOCK_DV``-channel
tiles so that the launch fills the GPU.

Forward: ``out = sum_n A_n V_n`` with ``A_n = exp(l_n - lse)`` from the logits that
``logits_fwd_kernel`` wrote. Backward: each channel tile writes its partial value dots
per sample, ``(dA_n, <dO, dV_n/dy>, <dO, dV_n/dx>)``, which the host sums over the
tiles in a fixed order for ``attention_bwd_kernel(VALUE_SUMS=True)``, and, with
``ATOMICS``, scatters the value-map gradient ``w_c A_n dO``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..bilinear import (
    blend,
    blend_rows,
    cell_tile,
    channels,
    corner_dots,
    gather_corners,
    load_rows,
    per_cell,
    sample_corners,
    scatter_corners,
    store_rows,
    weight_grads,
    zero_rows,
)
from .configs import tuned


@tuned("dsa_wide", "v_ptr", ["BUCKET", "KSIZE", "BACKWARD", "ATOMICS"], ["dvalue_ptr"])
@triton.jit
def wide_values_kernel(
    v_ptr,  # (P, DV) value map rows
    offsets_ptr,  # (P, N, 2)
    logits_ptr,  # (P, N) logits, accumulation dtype
    lse_ptr,  # (P,) their log-sum-exp
    dout_ptr,  # (P, DV) with BACKWARD: incoming gradient of out; else None
    out_ptr,  # (P, DV) out without BACKWARD: output, value dtype; else None
    dvalue_ptr,  # (P, DV) with BACKWARD and ATOMICS: value map gradient, zeroed; else None
    value_dots_ptr,  # (T, P, N, 3) out with BACKWARD: per channel tile t; else None
    P,
    H,
    W,
    G,
    DV,
    dilation,
    BUCKET,
    KSIZE: tl.constexpr,
    BACKWARD: tl.constexpr,
    ATOMICS: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    CHUNK_V: tl.constexpr,
    VEC: tl.constexpr,
):
    """Grid ``(cdiv(P, BLOCK_P), cdiv(DV, BLOCK_DV))``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    N: tl.constexpr = KSIZE * KSIZE
    cells, cell_mask, i, j, base = cell_tile(P, H, W, G, BLOCK_P)
    dv = channels(tl.program_id(1) * BLOCK_DV, BLOCK_DV, CHUNK_V, VEC)
    lse = tl.load(lse_ptr + cells, mask=cell_mask, other=0.0)
    if BACKWARD:
        dout = load_rows(dout_ptr, cells, cell_mask, dv, DV, ACC)
        dots = value_dots_ptr + ((tl.program_id(1) * P + cells) * N) * 3
    acc = zero_rows(cells, dv, ACC)
    for n in range(N):
        rows, masks, w, fy, fx = sample_corners(
            offsets_ptr, cells, cell_mask, i, j, base, H, W, G, dilation, n, KSIZE, ACC
        )
        a = tl.exp(tl.load(logits_ptr + cells * N + n, mask=cell_mask, other=0.0) - lse)
        values = gather_corners(v_ptr, rows, masks, dv, DV, ACC)
        if BACKWARD:
            wy, wx = weight_grads(fy, fx)
            g = corner_dots(dout, values)
            tl.store(dots + n * 3, blend(w, g), cell_mask)
            tl.store(dots + n * 3 + 1, blend(wy, g), cell_mask)
            tl.store(dots + n * 3 + 2, blend(wx, g), cell_mask)
            if ATOMICS:
                scatter_corners(dvalue_ptr, rows, masks, w, per_cell(a) * dout, dv, DV)
        else:
            acc += per_cell(a) * blend_rows(w, values)
    if not BACKWARD:
        store_rows(out_ptr, cells, cell_mask, dv, DV, acc)
