"""Shared ``@triton.jit`` sampling helpers: one definition of "where does sample n of a
cell land and what does it read", used by the forward and every backward kernel.

Conventions (docs/semantics.md §1.2):

* Maps are channels-last and flattened to rows: the row of ``(b, y, x, g)`` is
  ``((b * H + y) * W + x) * G + g`` and its ``D`` channels are contiguous.
* Cells are the flattened ``(b, i, j, g)`` grid, so cell ``c`` is also the row of its
  own query / output vector.
* Positions are in grid cells with pixel-centre convention; floor corners; zero padding.

Tiles. A program owns ``BLOCK_P`` cells; a row tile holds their channels as
``[chunks, BLOCK_P, lanes, VEC]``: ``VEC`` channels are one lane's 16-byte access and a
chunk of ``lanes * VEC`` (at most 32 lanes) what one warp covers. Triton lays a tile
out contiguous dimension first, then the others in an order it breaks ties on by
index (ascending up to triton 3.8, descending from 3.9; ``LANES_FIRST`` swaps the
chunk and lane axes to match): lanes take the channels of a chunk, the cells take the
warps, and the chunks of a wider row repeat in each lane's registers instead of
spreading over warps. A row lies within one warp, reducing it is a warp shuffle, never
a trip through shared memory and a barrier, and loads, stores and atomics of a row
tile share one layout.

Per-cell numbers are ``[BLOCK_P]``. The four floor corners of a sample travel as
4-tuples in the order (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1): ``rows``
(int64 map rows), ``masks`` (in bounds), ``weights`` (bilinear weights).
"""

import triton
import triton.language as tl

LANES_FIRST = tl.constexpr(tuple(map(int, triton.__version__.split(".")[:2])) < (3, 9))


@triton.jit
def cell_tile(P, H, W, G, BLOCK_P: tl.constexpr):
    """This program's cells (int64 ``[BLOCK_P]``), their mask, their row ``i`` and
    column ``j``, and ``base``, the map row of ``(b, 0, 0, g)`` of the cell's ``b`` and
    ``g``. Divisions run in 32 bits (launchers keep the cell count below 2**31): a
    64-bit division by a runtime value is a subroutine call."""
    cells = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    t = cells.to(tl.int32) // G
    j = t % W
    i = (t // W) % H
    base = cells - ((i * W + j) * G).to(tl.int64)
    return cells, cells < P, i, j, base


@triton.jit
def channels(start, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, VEC: tl.constexpr):
    """Channel ids of a row tile from ``start``: ``[BLOCK_D // CHUNK, 1, CHUNK // VEC,
    VEC]`` (chunk and lane axes swapped with ``LANES_FIRST``)."""
    chunk = tl.arange(0, BLOCK_D // CHUNK) * CHUNK
    lane = tl.arange(0, CHUNK // VEC) * VEC
    if LANES_FIRST:
        ids = lane[:, None, None, None] + chunk[None, None, :, None]
    else:
        ids = chunk[:, None, None, None] + lane[None, None, :, None]
    return start + ids + tl.arange(0, VEC)[None, None, None, :]


@triton.jit
def zero_rows(cells, d, ACC: tl.constexpr):
    """A zero row tile of ``cells`` (``[BLOCK_P]``) and channel ids ``d``."""
    return tl.zeros_like(per_cell(cells) + d).to(ACC)


@triton.jit
def per_cell(x):
    """A per-cell ``[BLOCK_P]`` number broadcastable against row tiles."""
    return x[None, :, None, None]


@triton.jit
def row_sum(x):
    """Sum of each cell's row of a row tile: ``[BLOCK_P]``."""
    return tl.sum(tl.sum(tl.sum(x, 3), 2), 0)


@triton.jit
def load_rows(ptr, rows, row_mask, d, D, ACC: tl.constexpr):
    """Row tile of rows ``rows`` (int64 ``[BLOCK_P]``), channels ``d`` of a row-major
    ``(rows, D)`` map, masked to zero, upcast to ``ACC`` right after the load."""
    ptrs = ptr + per_cell(rows) * D + d
    mask = per_cell(row_mask) & (d < D)
    return tl.load(ptrs, mask=mask, other=0.0).to(ACC)


@triton.jit
def store_rows(ptr, rows, row_mask, d, D, val):
    """Store a row tile into rows ``rows`` of a row-major ``(rows, D)`` tensor, cast to
    its element type."""
    ptrs = ptr + per_cell(rows) * D + d
    mask = per_cell(row_mask) & (d < D)
    tl.store(ptrs, val.to(ptr.dtype.element_ty), mask)


@triton.jit
def sample_corners(
    offsets_ptr,
    cells,
    cell_mask,
    i,
    j,
    base,
    H,
    W,
    G,
    dilation,
    n,
    KSIZE: tl.constexpr,
    ACC: tl.constexpr,
):
    """Where sample ``n`` of each cell lands and how it reads the map.

    The position is the ``n``-th point of the row-major ``KSIZE x KSIZE`` window,
    spaced ``dilation`` cells apart and centred on ``(i, j)``, plus the learned offset
    ``(dy, dx)`` read from ``offsets_ptr`` (laid out ``(cells, N, 2)``), in ``ACC``.
    ``KSIZE`` is a compile-time constant: ``n // KSIZE`` and ``n % KSIZE`` compile to a
    multiply and shifts, not to a division.

    Returns ``rows, masks, weights, fy, fx``: the corner 4-tuples (masks include
    ``cell_mask``) and the fractional parts ``fy, fx`` in ``[0, 1)``.

    A position that can touch the map lies in ``[-1, H) x [-1, W)``; everything else,
    NaN, +-Inf and huge finite values included (every comparison with NaN is false),
    has all four corners masked. Such positions become 0 *before* ``floor`` and the
    float->int conversion, so no wild index is formed, and their weights stay finite
    while meeting only masked corners: a zero sample and a zero offset gradient.
    """
    offset = offsets_ptr + (cells * (KSIZE * KSIZE) + n) * 2
    dy = tl.load(offset, mask=cell_mask, other=0.0).to(ACC)
    dx = tl.load(offset + 1, mask=cell_mask, other=0.0).to(ACC)
    # The window is integer-valued for odd KSIZE, so i + r is exact before the single
    # rounding that adding the offset incurs (the reference adds in the same order).
    y = (i + (n // KSIZE - (KSIZE - 1) // 2) * dilation).to(ACC) + dy
    x = (j + (n % KSIZE - (KSIZE - 1) // 2) * dilation).to(ACC) + dx
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
    4-tuples), the floor corners held fixed: one-sided at integer positions."""
    return (fx - 1.0, -fx, 1.0 - fx, fx), (fy - 1.0, 1.0 - fy, -fy, fy)


@triton.jit
def gather_corners(map_ptr, rows, masks, d, D, ACC: tl.constexpr):
    """The four corner row tiles ``map[r_c, d]`` of one sample, masked to zero, in
    ``ACC``: each corner row is read once and everything is derived from these."""
    return (
        load_rows(map_ptr, rows[0], masks[0], d, D, ACC),
        load_rows(map_ptr, rows[1], masks[1], d, D, ACC),
        load_rows(map_ptr, rows[2], masks[2], d, D, ACC),
        load_rows(map_ptr, rows[3], masks[3], d, D, ACC),
    )


@triton.jit
def blend(w, c):
    """``sum_c w_c c_c`` of per-cell ``[BLOCK_P]`` corner numbers."""
    return w[0] * c[0] + w[1] * c[1] + w[2] * c[2] + w[3] * c[3]


@triton.jit
def blend_rows(w, c):
    """``sum_c w_c c_c`` of corner row tiles with per-cell weights: the sample."""
    out = per_cell(w[0]) * c[0] + per_cell(w[1]) * c[1]
    return out + per_cell(w[2]) * c[2] + per_cell(w[3]) * c[3]


@triton.jit
def corner_dots(src, c):
    """``<src, c_c>`` per cell for the four corner tiles: what the offset gradient
    needs (bilinear sampling is linear, so a sample's dot and its position
    derivatives are weighted sums of these four)."""
    return row_sum(src * c[0]), row_sum(src * c[1]), row_sum(src * c[2]), row_sum(src * c[3])


@triton.jit
def stash(saved, slot, index, value):
    """``saved`` with per-cell ``value`` put in slot ``index``. ``saved`` is a
    row tile of ``SLOTS`` channels (``zero_rows``), ``slot`` its slot ids
    (``channels(0, SLOTS, SLOTS, VEC)``): the
    per-sample numbers of a runtime loop stay in registers, spread over the lanes that
    share a row instead of repeated in each."""
    return tl.where(slot == index, per_cell(value), saved)


@triton.jit
def unstash(saved, slot, index):
    """The per-cell number in slot ``index`` of ``saved`` (a warp shuffle reduction)."""
    return row_sum(tl.where(slot == index, saved, 0.0))


@triton.jit
def clamp_logit(logit):
    """``clamp(logit, -M, M)``, M the largest finite value of its dtype: a finite scale
    that overflows ``scale * <q, K_n>`` still gives a valid softmax. (Gradients are
    taken as if unclamped.)"""
    if logit.dtype == tl.float64:  # noqa: SIM108 (a compile-time branch on the dtype)
        big = 1.7976931348623157e308
    else:
        big = 3.4028234663852886e38
    limit = tl.full(logit.shape, big, logit.dtype)
    return tl.minimum(tl.maximum(logit, -limit), limit)


@triton.jit
def scatter_corners(ptr, rows, masks, w, src, d, D):
    """Atomically add ``w_c * src`` into the four corner rows of a ``(rows, D)``
    accumulator: one relaxed atomic per in-bounds corner and channel (atomicity is
    needed, not ordering against other memory)."""
    for c in tl.static_range(4):
        ptrs = ptr + per_cell(rows[c]) * D + d
        mask = per_cell(masks[c]) & (d < D)
        tl.atomic_add(ptrs, per_cell(w[c]) * src, mask=mask, sem="relaxed")
