"""Pure-PyTorch dynamic sample attention: the ground truth for every kernel.

This file follows docs/semantics.md §1 line by line and favours clarity over speed:
it materialises the N sampled keys and values (B, H, W, G, N, D), which is what
the fused Triton kernels exist to avoid. Gradients come from autograd, so the
bilinear-weight derivative is one-sided at integer positions exactly as the
floor corners make it (the same convention as ``F.grid_sample``).
"""

from __future__ import annotations

import math

import torch

from ddsm_triton._numerics import autocast_off, clamp_to_finite, compute_dtype

__all__ = [
    "base_grid",
    "bilinear_sample",
    "dynamic_sample_attention",
    "sample_positions",
]

# Where a non-finite position is moved to: two cells above the map, so all four
# corners are out of bounds and the sample is zero. Because the move is a
# ``torch.where``, no gradient flows back to the offending offset.
_OUT_OF_BOUNDS = -2.0
# Where huge finite positions are clamped to: the maps are validated to sides below
# 2**24 (docs/semantics.md §3.1), so every corner there is out of bounds. A plain number
# rather than the map's size keeps the graph free of size arithmetic, which exported
# graphs with dynamic sizes need (the grid_sample backend shares these positions).
_FAR = float(2**24)


def base_grid(num_samples: int, dilation: int, *, dtype: torch.dtype, device: torch.device):
    """The regular k x k window, row-major, centred on the cell.

    Returns a (N, 2) tensor of (dy, dx) displacements in grid cells, N = k*k.
    """
    k = math.isqrt(num_samples)
    n = torch.arange(num_samples, device=device)
    centre = (k - 1) / 2
    dy = (n // k).to(dtype) - centre
    dx = (n % k).to(dtype) - centre
    return torch.stack([dy, dx], dim=-1) * dilation


def sample_positions(offsets: torch.Tensor, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sample positions ``(y, x)``, each (B, H, W, G, N), in grid cells.

    Non-finite positions are replaced by an out-of-bounds point (zero sample,
    zero gradient). Huge finite ones are clamped to 2**24, beyond every map, which
    keeps every corner out of bounds and keeps ``floor`` inside int64.
    """
    _, H, W, _, N, _ = offsets.shape
    grid = base_grid(N, dilation, dtype=offsets.dtype, device=offsets.device)
    i = torch.arange(H, device=offsets.device, dtype=offsets.dtype).view(1, H, 1, 1, 1)
    j = torch.arange(W, device=offsets.device, dtype=offsets.dtype).view(1, 1, W, 1, 1)
    y = i + grid[:, 0] + offsets[..., 0]
    x = j + grid[:, 1] + offsets[..., 1]
    finite = torch.isfinite(y) & torch.isfinite(x)
    y = torch.where(finite, y, _OUT_OF_BOUNDS).clamp(_OUT_OF_BOUNDS, _FAR)
    x = torch.where(finite, x, _OUT_OF_BOUNDS).clamp(_OUT_OF_BOUNDS, _FAR)
    return y, x


def bilinear_sample(feature: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of a map at positions, zero padding, floor corners.

    Args:
        feature: (B, H, W, G, D) map.
        y, x: (B, H, W, G, N) positions in grid cells (finite, clamped).

    Returns:
        (B, H, W, G, N, D) samples.
    """
    B, H, W, G, D = feature.shape
    N = y.shape[-1]
    # (B, G, H*W, D): one flat map per (batch, head) for torch.gather.
    flat = feature.permute(0, 3, 1, 2, 4).reshape(B, G, H * W, D)
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    # The four corners stacked on a new last axis, (B, H, W, G, N, 4), and read with
    # a single gather. (Four separate gathers summed compile wrongly under inductor,
    # torch 2.13 CPU: the summed scatter_add gradients were read before they were
    # written, giving the channel branch's value projection an all-zero gradient.)
    cy = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    cx = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    weight = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=-1)
    inside = (cy >= 0) & (cy <= H - 1) & (cx >= 0) & (cx <= W - 1)
    index = (cy.clamp(0, H - 1) * W + cx.clamp(0, W - 1)).long()
    # (B, H, W, G, N, 4) -> (B, G, H*W*N*4) so gather reads along the pixel axis.
    index = index.permute(0, 3, 1, 2, 4, 5).reshape(B, G, H * W * N * 4, 1)
    values = torch.gather(flat, 2, index.expand(-1, -1, -1, D))
    values = values.view(B, G, H, W, N, 4, D).permute(0, 2, 3, 1, 4, 5, 6)
    return ((weight * inside).unsqueeze(-1) * values).sum(dim=-2)


def dynamic_sample_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    *,
    dilation: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """Each cell attends over N bilinear samples of the key/value maps.

    Args:
        query: (B, H, W, G, Dk).
        key: (B, H, W, G, Dk) map that keys are sampled from.
        value: (B, H, W, G, Dv) map that values are sampled from.
        offsets: (B, H, W, G, N, 2) learned (dy, dx) per sample, in grid cells;
            N = k*k for odd k.
        dilation: spacing of the regular k x k window, in grid cells.
        scale: logit scale, default 1/sqrt(Dk).

    Returns:
        (B, H, W, G, Dv) in the dtype of ``value``. Half types are computed in
        float32; float64 stays float64.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    compute = compute_dtype(value.dtype)
    # Autocast off: the einsums below would otherwise run in the autocast dtype,
    # and the op is defined to compute in float32 for half inputs (as the kernels do).
    with autocast_off(value.device):
        q, k, v, off = (t.to(compute) for t in (query, key, value, offsets))

        y, x = sample_positions(off, dilation)
        keys = bilinear_sample(k, y, x)  # (B, H, W, G, N, Dk)
        values = bilinear_sample(v, y, x)  # (B, H, W, G, N, Dv)
        # Clamped to the finite range, so that a large finite scale cannot make the
        # softmax NaN (see clamp_to_finite).
        logits = clamp_to_finite(scale * torch.einsum("bhwgd,bhwgnd->bhwgn", q, keys))
        attn = torch.softmax(logits, dim=-1)
        out = torch.einsum("bhwgn,bhwgnd->bhwgd", attn, values)
    return out.to(value.dtype)
