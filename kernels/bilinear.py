"""Shared ``@triton.jit`` sampling helpers: one definition of "where does sample n of a
cell land and what does it read", used by the forward and every backward kernel.

Conventions (SPEC section 1):

* Maps are channels-last and flattened to rows: the row of ``(b, y, x, g)`` is
  ``((b * H + y) * W + x) * G + g`` and its ``D`` channels are contiguous, so a row
  is one wide, coalesced load.
* Cells are the flattened ``(b, i, j, g)`` grid, so cell ``c`` is also the row of its
  own query / output vector.
* Positions are in grid cells with pixel-centre convention; floor corners; zero padding.

Every helper works on a tile of ``BLOCK_P`` cells at once: its tensors have shape
``[BLOCK_P]`` (per cell) or ``[BLOCK_P, BLOCK_D]`` (per cell and channel).
"""

import triton
import triton.language as tl


@triton.jit
def cell_coords(cells, H, W, G):
    """Split flattened cell ids (int64 ``[BLOCK_P]``) into the row ``i``, the column
    ``j`` and ``base``, the map row of ``(b, 0, 0, g)`` for the cell's own ``b`` and
    ``g``; the map row of ``(b, y, x, g)`` is then ``base + (y * W + x) * G``."""
    t = cells // G
    j = t % W
    i = (t // W) % H
    base = cells - (i * W + j) * G
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

    Returns, all ``[BLOCK_P]``: the floor-corner rows ``r00, r01, r10, r11`` (int64;
    ``r01`` is one column right of ``r00``, ``r10`` one row down), their masks
    ``m00 .. m11`` (in bounds and ``cell_mask``), the bilinear weights ``w00 .. w11``
    and the fractional parts ``fy, fx`` in ``[0, 1)``.

    A position that can touch the map lies in ``[-1, H) x [-1, W)``; everything else,
    including NaN, +-Inf and huge finite values (every comparison with NaN is false),
    has all four corners masked. Such positions are replaced by 0 *before* ``floor``
    and the float->int conversion, so no wild index is ever formed, and their weights
    and weight derivatives stay finite while meeting only masked (zero) corners:
    a zero sample and a zero offset gradient.

    (One helper rather than several: the interpreter pays a large fixed cost per
    ``@triton.jit`` call, and the compiler inlines it either way.)
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
    return (
        r00,
        r00 + G,
        r10,
        r10 + G,
        top & left,
        top & right,
        bottom & left,
        bottom & right,
        (1.0 - fy) * (1.0 - fx),
        (1.0 - fy) * fx,
        fy * (1.0 - fx),
        fy * fx,
        fy,
        fx,
    )


@triton.jit
def bilinear_weight_grads(fy, fx):
    """Derivatives of the corner weights with respect to ``y`` then ``x``, taken with the
    floor corners held fixed (one-sided at integer positions, as ``grid_sample``):
    ``dw00/dy, dw01/dy, dw10/dy, dw11/dy, dw00/dx, dw01/dx, dw10/dx, dw11/dx``."""
    return fx - 1.0, -fx, 1.0 - fx, fx, fy - 1.0, 1.0 - fy, -fy, fy


@triton.jit
def load_rows(ptr, rows, row_mask, d, d_mask, D, ACC: tl.constexpr):
    """``[BLOCK_P, BLOCK_D]`` tile of rows ``rows`` (int64 ``[BLOCK_P]``), channels ``d``
    of a row-major ``(rows, D)`` map, masked to zero, upcast to ``ACC``. Upcasting right
    after the load keeps bfloat16 out of all arithmetic."""
    ptrs = ptr + rows[:, None] * D + d[None, :]
    mask = row_mask[:, None] & d_mask[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(ACC)


@triton.jit
def corner_dots(src, map_ptr, r00, r01, r10, r11, m00, m01, m10, m11, d, d_mask, D):
    """Dot products ``<src, map[r_c, d]>`` for the four corners over one channel chunk.

    ``src`` is ``[BLOCK_P, BLOCK_D]`` in the accumulation dtype; returns four
    ``[BLOCK_P]``. Bilinear sampling is linear, so ``<src, K_n>`` and its position
    derivatives are all weighted sums of these four numbers: the per-corner form lets
    the forward and the backward share one gather and never build ``K_n``.
    """
    rows = map_ptr + d[None, :]
    dm = d_mask[None, :]
    h00 = tl.sum(src * tl.load(rows + r00[:, None] * D, m00[:, None] & dm, 0.0).to(src.dtype), 1)
    h01 = tl.sum(src * tl.load(rows + r01[:, None] * D, m01[:, None] & dm, 0.0).to(src.dtype), 1)
    h10 = tl.sum(src * tl.load(rows + r10[:, None] * D, m10[:, None] & dm, 0.0).to(src.dtype), 1)
    h11 = tl.sum(src * tl.load(rows + r11[:, None] * D, m11[:, None] & dm, 0.0).to(src.dtype), 1)
    return h00, h01, h10, h11


@triton.jit
def corner_dot_sums(
    src_ptr,
    map_ptr,
    cells,
    cell_mask,
    r00,
    r01,
    r10,
    r11,
    m00,
    m01,
    m10,
    m11,
    D,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    """``<src[cell], map[r_c]>`` for the four corners over all ``D`` channels, read in
    ``BLOCK_D`` chunks: four ``[BLOCK_P]`` in ``ACC``. The logit of a sample and its
    position derivative are weighted sums of these, so forward and backward agree to
    the last bit on ``l_n``."""
    h00 = tl.zeros_like(r00).to(ACC)
    h01 = tl.zeros_like(r00).to(ACC)
    h10 = tl.zeros_like(r00).to(ACC)
    h11 = tl.zeros_like(r00).to(ACC)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        src = load_rows(src_ptr, cells, cell_mask, d, d_mask, D, ACC)
        c00, c01, c10, c11 = corner_dots(
            src, map_ptr, r00, r01, r10, r11, m00, m01, m10, m11, d, d_mask, D
        )
        h00 += c00
        h01 += c01
        h10 += c10
        h11 += c11
    return h00, h01, h10, h11


@triton.jit
def bilinear_gather(
    map_ptr, r00, r01, r10, r11, m00, m01, m10, m11, w00, w01, w10, w11, d, d_mask, D
):
    """Bilinearly sampled ``[BLOCK_P, BLOCK_D]`` chunk ``sum_c w_c * map[r_c, d]``, in
    the dtype of the weights."""
    ACC: tl.constexpr = w00.dtype
    rows = map_ptr + d[None, :]
    dm = d_mask[None, :]
    acc = w00[:, None] * tl.load(rows + r00[:, None] * D, m00[:, None] & dm, 0.0).to(ACC)
    acc += w01[:, None] * tl.load(rows + r01[:, None] * D, m01[:, None] & dm, 0.0).to(ACC)
    acc += w10[:, None] * tl.load(rows + r10[:, None] * D, m10[:, None] & dm, 0.0).to(ACC)
    acc += w11[:, None] * tl.load(rows + r11[:, None] * D, m11[:, None] & dm, 0.0).to(ACC)
    return acc
