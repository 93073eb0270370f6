"""Shared ``@triton.jit`` sampling helpers: one definition of "where does sample n of a
cell land and what does it read", used by the forward and every backward kernel.

Conventions (docs/semantics.md §1.2):

* Maps are channels-last and flattened to rows: the row of ``(b, y, x, g)`` is
  ``((b * H + y) * W + x) * G + g`` and its ``D`` channels are contiguous, so a row
  is one wide, coalesced load.
* Cells are the flattened ``(b, i, j, g)`` grid, so cell ``c`` is also the row of its
  own query / output vector.
* Positions are in grid cells with pixel-centre convention; floor corners; zero padding.

Every helper works on a tile of ``BLOCK_P`` cells at once: its tensors have shape
``[BLOCK_P]`` (per cell) or ``[BLOCK_P, BLOCK_D]`` (per cell and channel). The four
floor corners of a sample travel as 4-tuples in the order (y0, x0), (y0, x0 + 1),
(y0 + 1, x0), (y0 + 1, x0 + 1): ``rows`` (int64 map rows), ``masks`` (in bounds),
``weights`` (bilinear weights) and, from them, corner tiles or per-corner dots.
"""

import triton
import triton.language as tl


@triton.jit
def cell_coords(cells, H, W, G):
    """Split flattened cell ids (int64 ``[BLOCK_P]``) into the row ``i``, the column
    ``j`` and ``base``, the map row of ``(b, 0, 0, g)`` for the cell's own ``b`` and
    ``g``; the map row of ``(b, y, x, g)`` is then ``base + (y * W + x) * G``.

    The divisions run in 32 bits (launchers keep the cell count below 2**31): a 64-bit
    division by a runtime value is a subroutine call, which costs a stack frame."""
    t = cells.to(tl.int32) // G
    j = t % W
    i = (t // W) % H
    base = cells - ((i * W + j) * G).to(tl.int64)
    return i, j, base


@triton.jit
def sample_corners(
    off_ptr, cells, cell_mask, n, i, j, base, H, W, G, ksize, dilation, ACC: tl.constexpr
):
    """Where sample ``n`` of each cell lands and how it reads the map.

    The position is the ``n``-th point of the row-major ``ksize x ksize`` window,
    spaced ``dilation`` cells apart and centred on ``(i, j)``, plus the learned offset
    ``(dy, dx)`` read from ``off_ptr`` (laid out ``(cells, N, 2)``, ``N = ksize**2``),
    computed in ``ACC``.

    Returns ``rows, masks, weights, fy, fx``: the corner 4-tuples (masks include
    ``cell_mask``) and the fractional parts ``fy, fx`` in ``[0, 1)``, all ``[BLOCK_P]``.

    A position that can touch the map lies in ``[-1, H) x [-1, W)``; everything else,
    including NaN, +-Inf and huge finite values (every comparison with NaN is false),
    has all four corners masked. Such positions are replaced by 0 *before* ``floor``
    and the float->int conversion, so no wild index is ever formed, and their weights
    and weight derivatives stay finite while meeting only masked (zero) corners:
    a zero sample and a zero offset gradient.
    """
    off = off_ptr + (cells * (ksize * ksize) + n) * 2
    dy = tl.load(off, mask=cell_mask, other=0.0).to(ACC)
    dx = tl.load(off + 1, mask=cell_mask, other=0.0).to(ACC)
    # The window is integer-valued for odd ksize, so i + r is exact before the single
    # rounding that adding the offset incurs (the reference adds in the same order).
    half = (ksize - 1) // 2
    y = (i + (n // ksize - half) * dilation).to(ACC) + dy
    x = (j + (n % ksize - half) * dilation).to(ACC) + dx

    inside = cell_mask & (y >= -1.0) & (y < H) & (x >= -1.0) & (x < W)
    y = tl.where(inside, y, 0.0)
    x = tl.where(inside, x, 0.0)
    y0f = tl.floor(y)
    x0f = tl.floor(x)
    fy = y - y0f
    fx = x - x0f
    y0 = y0f.to(tl.int64)
    x0 = x0f.to(tl.int64)
    top = inside & (y0 >= 0)
    bottom = inside & (y0 + 1 < H)
    left = x0 >= 0
    right = x0 + 1 < W
    r00 = base + (y0 * W + x0) * G
    r10 = r00 + W * G
    rows = (r00, r00 + G, r10, r10 + G)
    masks = (top & left, top & right, bottom & left, bottom & right)
    weights = ((1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx)
    return rows, masks, weights, fy, fx


@triton.jit
def weight_grads(fy, fx):
    """Derivatives of the corner weights with respect to ``y`` and to ``x`` (two
    4-tuples), taken with the floor corners held fixed: one-sided at integer positions,
    as ``grid_sample``."""
    return (fx - 1.0, -fx, 1.0 - fx, fx), (fy - 1.0, 1.0 - fy, -fy, fy)


@triton.jit
def load_rows(ptr, rows, row_mask, d, d_mask, D, ACC: tl.constexpr):
    """``[BLOCK_P, BLOCK_D]`` tile of rows ``rows`` (int64 ``[BLOCK_P]``), channels ``d``
    of a row-major ``(rows, D)`` map, masked to zero, upcast to ``ACC``. Upcasting right
    after the load keeps bfloat16 out of all arithmetic."""
    ptrs = ptr + rows[:, None] * D + d[None, :]
    mask = row_mask[:, None] & d_mask[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(ACC)


@triton.jit
def store_rows(ptr, rows, row_mask, d, d_mask, D, val):
    """Store a ``[BLOCK_P, BLOCK_D]`` tile into rows ``rows`` of a row-major ``(rows, D)``
    tensor, cast to its element type."""
    ptrs = ptr + rows[:, None] * D + d[None, :]
    tl.store(ptrs, val.to(ptr.dtype.element_ty), row_mask[:, None] & d_mask[None, :])


@triton.jit
def gather_corners(map_ptr, rows, masks, d, d_mask, D, ACC: tl.constexpr):
    """The four corner tiles ``map[r_c, d]`` of one sample, masked to zero, upcast to
    ``ACC``. Kernels read each corner once and derive every quantity from these tiles:
    dot products, the bilinear sample and its position derivative."""
    return (
        load_rows(map_ptr, rows[0], masks[0], d, d_mask, D, ACC),
        load_rows(map_ptr, rows[1], masks[1], d, d_mask, D, ACC),
        load_rows(map_ptr, rows[2], masks[2], d, d_mask, D, ACC),
        load_rows(map_ptr, rows[3], masks[3], d, d_mask, D, ACC),
    )


@triton.jit
def blend(w, c):
    """``sum_c w_c c_c`` of per-cell ``[BLOCK_P]`` corner numbers."""
    return w[0] * c[0] + w[1] * c[1] + w[2] * c[2] + w[3] * c[3]


@triton.jit
def blend_rows(w, c):
    """``sum_c w_c c_c`` with per-cell weights and ``[BLOCK_P, BLOCK_D]`` corner tiles:
    the bilinear sample."""
    return w[0][:, None] * c[0] + w[1][:, None] * c[1] + w[2][:, None] * c[2] + w[3][:, None] * c[3]


@triton.jit
def row_dots(src, c):
    """``<src, c_c>`` per cell for the four corner tiles. Bilinear sampling is linear,
    so ``<src, K_n>`` and its position derivatives are weighted sums of these four."""
    return (
        tl.sum(src * c[0], 1),
        tl.sum(src * c[1], 1),
        tl.sum(src * c[2], 1),
        tl.sum(src * c[3], 1),
    )


@triton.jit
def clamped_logit(scale, w, h):
    """``l_n = clamp(scale * <q, K_n>, -M, M)`` from the corner dots ``h_c = <q, key_c>``,
    M the largest finite value of the accumulation dtype: a finite scale that overflows
    the product still gives a valid softmax. (Gradients are taken as if unclamped.)"""
    logit = scale * blend(w, h)
    if logit.dtype == tl.float64:  # noqa: SIM108 (a compile-time branch on the dtype)
        big = 1.7976931348623157e308
    else:
        big = 3.4028234663852886e38
    limit = tl.full(logit.shape, big, logit.dtype)
    return tl.minimum(tl.maximum(logit, -limit), limit)


@triton.jit
def scatter_corners(ptr, rows, masks, w, src, d, d_mask, D):
    """Atomically add ``w_c * src`` into the four corner rows of a ``(rows, D)``
    accumulator: one relaxed atomic per in-bounds corner and channel (only atomicity is
    needed, not ordering against other memory)."""
    cols = ptr + d[None, :]
    dm = d_mask[None, :]
    for c in tl.static_range(4):
        tl.atomic_add(
            cols + rows[c][:, None] * D,
            w[c][:, None] * src,
            mask=masks[c][:, None] & dm,
            sem="relaxed",
        )
