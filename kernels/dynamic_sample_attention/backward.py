"""Backward kernel: the gradients of ``out`` for query, key, value and offsets, in one
pass over the gathered corners.

Per sample: the logit is recomputed exactly as the forward computes it and
``A_n = exp(l_n - lse)`` from the saved log-sum-exp. The key corners give the sample
``K_n`` and the two dots the offset gradient needs, ``<q, dK_n/dy>`` and
``<q, dK_n/dx>``; the value corners give ``<dO, V_c>`` per corner, hence
``dA_n = <dO, V_n>`` and ``<dO, dV_n/dy>``, ``<dO, dV_n/dx>``, and the value-map
gradient ``w_c A_n dO`` (atomics). ``dq = scale sum_n A_n (dA_n - Delta) K_n`` builds up
from two sums in registers, and ``Delta = sum_n A_n dA_n`` is exact in the accumulation
dtype (not read from a half-precision ``out``).

Everything that needs ``Delta`` waits for the last sample: six numbers per sample stay
in registers, no scratch memory, in a ``[BLOCK_P, 1, SLOTS]`` tile spread over the
lanes of a row (``bilinear.stash``), and a second, gather-free pass writes the offset
gradient and scatters the key-map gradient ``w_c scale dl_n q`` with
``dl_n = A_n (dA_n - Delta)``. Samples run as loops (unrolled, the compiler hoists
every corner load and runs out of registers; see ``forward.py``).

With ``VALUE_SUMS`` (wide values) the value side comes from ``wide.py``: the three
value dots per sample, summed over the channel tiles. Without ``ATOMICS``
(deterministic mode) the map gradients are not scattered: each (cell, sample, corner)
writes an entry, its map row and two coefficients, which ``deterministic.py`` sums.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..bilinear import (
    blend,
    blend_rows,
    cell_tile,
    channels,
    clamp_logit,
    corner_dots,
    gather_corners,
    load_rows,
    per_cell,
    row_sum,
    sample_corners,
    scatter_corners,
    stash,
    store_rows,
    unstash,
    weight_grads,
    zero_rows,
)
from .configs import tuned


@tuned(
    "dsa_bwd",
    "q_ptr",
    ["BUCKET", "KSIZE", "VALUE_SUMS", "ATOMICS"],
    reset_to_zero=["dkey_ptr", "dvalue_ptr"],  # atomics restart at zero per timing run
)
@triton.jit
def attention_bwd_kernel(
    q_ptr,  # (P, DK) queries
    k_ptr,  # (P, DK) key map rows
    v_ptr,  # (P, DV) value map rows; None with VALUE_SUMS
    offsets_ptr,  # (P, N, 2)
    scale_ptr,  # (1,) accumulation dtype
    lse_ptr,  # (P,) the forward's log-sum-exp
    dout_ptr,  # (P, DV) incoming gradient of out; None with VALUE_SUMS
    value_dots_ptr,  # (P, N, 3) with VALUE_SUMS: dA_n, <dO, dV_n/dy>, <dO, dV_n/dx>
    dq_ptr,  # (P, DK) out: query gradient, query dtype
    doffsets_ptr,  # (P, N, 2) out: offset gradient, offsets dtype
    dkey_ptr,  # (P, DK) with ATOMICS: key map gradient, accumulation dtype, zeroed
    dvalue_ptr,  # (P, DV) with ATOMICS, without VALUE_SUMS: value map gradient, likewise
    entry_rows_ptr,  # (P, N, 4) out without ATOMICS: each corner's map row, P outside
    entry_weights_ptr,  # (P, N, 4, 2) out without ATOMICS: w_c * (scale dl_n, A_n)
    P,
    H,
    W,
    G,
    DK,
    DV,
    dilation,
    BUCKET,
    KSIZE: tl.constexpr,
    VALUE_SUMS: tl.constexpr,
    ATOMICS: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    CHUNK_K: tl.constexpr,
    CHUNK_V: tl.constexpr,
    VEC: tl.constexpr,
    SLOTS: tl.constexpr,  # >= 6 N, a power of two
):
    """Grid ``(cdiv(P, BLOCK_P),)``."""
    ACC: tl.constexpr = lse_ptr.dtype.element_ty
    N: tl.constexpr = KSIZE * KSIZE
    cells, cell_mask, i, j, base = cell_tile(P, H, W, G, BLOCK_P)
    scale = tl.load(scale_ptr)
    lse = tl.load(lse_ptr + cells, mask=cell_mask, other=0.0)
    dk = channels(0, BLOCK_DK, CHUNK_K, VEC)
    dv = channels(0, BLOCK_DV, CHUNK_V, VEC)
    q = load_rows(q_ptr, cells, cell_mask, dk, DK, ACC)
    if not VALUE_SUMS:
        dout = load_rows(dout_ptr, cells, cell_mask, dv, DV, ACC)

    key_sum = zero_rows(cells, dk, ACC)  # sum_n A_n K_n
    key_dsum = zero_rows(cells, dk, ACC)  # sum_n A_n dA_n K_n
    delta = tl.zeros([BLOCK_P], ACC)  # sum_n A_n dA_n = <dO, out>
    # Per sample, what the second pass needs: slot 6 n + k.
    slot = channels(0, SLOTS, SLOTS, VEC)
    saved = zero_rows(cells, slot, ACC)
    for n in range(N):
        rows, masks, w, fy, fx = sample_corners(
            offsets_ptr, cells, cell_mask, i, j, base, H, W, G, dilation, n, KSIZE, ACC
        )
        wy, wx = weight_grads(fy, fx)
        keys = gather_corners(k_ptr, rows, masks, dk, DK, ACC)
        key = blend_rows(w, keys)
        a = tl.exp(clamp_logit(scale * row_sum(q * key)) - lse)
        q_dy = scale * row_sum(q * blend_rows(wy, keys))  # scale <q, dK_n/dy>
        q_dx = scale * row_sum(q * blend_rows(wx, keys))
        if VALUE_SUMS:
            dots = value_dots_ptr + (cells * N + n) * 3
            da = tl.load(dots, mask=cell_mask, other=0.0)
            dout_dy = tl.load(dots + 1, mask=cell_mask, other=0.0)
            dout_dx = tl.load(dots + 2, mask=cell_mask, other=0.0)
        else:
            g = corner_dots(dout, gather_corners(v_ptr, rows, masks, dv, DV, ACC))
            da = blend(w, g)
            dout_dy = blend(wy, g)  # <dO, dV_n/dy>
            dout_dx = blend(wx, g)
            if ATOMICS:
                scatter_corners(dvalue_ptr, rows, masks, w, per_cell(a) * dout, dv, DV)
        key_sum += per_cell(a) * key
        key_dsum += per_cell(a * da) * key
        delta += a * da
        saved = stash(saved, slot, 6 * n, a)
        saved = stash(saved, slot, 6 * n + 1, da)
        saved = stash(saved, slot, 6 * n + 2, q_dy)
        saved = stash(saved, slot, 6 * n + 3, q_dx)
        saved = stash(saved, slot, 6 * n + 4, dout_dy)
        saved = stash(saved, slot, 6 * n + 5, dout_dx)
    dq = scale * (key_dsum - per_cell(delta) * key_sum)
    store_rows(dq_ptr, cells, cell_mask, dk, DK, dq)

    for n in range(N):
        a = unstash(saved, slot, 6 * n)
        dl = a * (unstash(saved, slot, 6 * n + 1) - delta)  # dl_n = A_n (dA_n - Delta)
        doffsets = doffsets_ptr + (cells * N + n) * 2
        for k in tl.static_range(2):  # dl_n scale <q, dK_n/dp> + A_n <dO, dV_n/dp>
            doffset = dl * unstash(saved, slot, 6 * n + 2 + k) + a * unstash(
                saved, slot, 6 * n + 4 + k
            )
            tl.store(doffsets + k, doffset.to(doffsets_ptr.dtype.element_ty), cell_mask)
        rows, masks, w, _fy, _fx = sample_corners(
            offsets_ptr, cells, cell_mask, i, j, base, H, W, G, dilation, n, KSIZE, ACC
        )
        if ATOMICS:
            scatter_corners(dkey_ptr, rows, masks, w, per_cell(scale * dl) * q, dk, DK)
        else:
            for c in tl.static_range(4):
                entry = (cells * N + n) * 4 + c
                target = tl.where(masks[c], rows[c], P).to(entry_rows_ptr.dtype.element_ty)
                tl.store(entry_rows_ptr + entry, target, cell_mask)
                tl.store(entry_weights_ptr + entry * 2, w[c] * scale * dl, cell_mask)
                tl.store(entry_weights_ptr + entry * 2 + 1, w[c] * a, cell_mask)
