"""Dynamic sample attention on ``F.grid_sample``: the fast plain-PyTorch backend.

Same op, same numbers as ``ddsm_triton.reference`` (docs/semantics.md §1), several
times faster on CPU (``make bench`` gives the torch/eager ratio): ``grid_sample``
samples the key and value maps at all N positions with one vectorised kernel each
way, where the reference gathers four stacked corners and scatter-adds them back.
It still keeps the N samples of every cell for backward (a quarter of the
reference's saved bytes, about five times the Triton kernels'), which is what the
fused kernels exist to avoid.

Two details make it exact, not just close:

* Positions come from the reference's ``sample_positions``, so non-finite ones
  are moved out of bounds (zero sample, zero offset gradient) and huge ones are
  clamped, before ``grid_sample`` sees them.
* ``grid_sample`` takes coordinates normalised to [-1, 1] and multiplies them
  back by ``(size - 1) / 2``. For a general size that round trip rounds, and at an
  integer position (every sample of a fresh layer, whose offsets are zero) the
  floor can land one cell lower, flipping the one-sided offset gradient. The maps
  are therefore zero-padded to ``2**m + 1`` rows and columns: the scale factors
  become powers of two and an integer position survives normalisation exactly.
  Padding with zeros changes nothing else, as corners outside the map read zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddsm_triton._numerics import autocast_off, clamp_to_finite, compute_dtype
from ddsm_triton.reference import sample_positions

__all__ = ["dynamic_sample_attention", "padded_size"]


def padded_size(size: int) -> int:
    """The smallest ``2**m + 1 >= size`` with m >= 0 (so at least 2): a side whose
    ``size - 1`` is a power of two, which makes grid_sample's normalisation exact."""
    return 2 ** (max(size, 2) - 2).bit_length() + 1


def _padded_maps(feature: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W, G, D) -> (B*G, D, height, width), zero beyond (H, W): grid_sample's layout."""
    B, H, W, G, D = feature.shape
    maps = feature.new_zeros(B, G, D, height, width)
    maps[..., :H, :W] = feature.permute(0, 3, 4, 1, 2)
    return maps.view(B * G, D, height, width)


def _normalised_grid(y: torch.Tensor, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Positions (B, H, W, G, N) in cells -> grid_sample's grid (B*G, H*W, N, 2) of (x, y)
    in [-1, 1] for maps of ``height`` x ``width`` (each ``2**m + 1``: exact scaling)."""
    B, H, W, G, N = y.shape
    grid = torch.stack([x * (2 / (width - 1)) - 1, y * (2 / (height - 1)) - 1], dim=-1)
    return grid.permute(0, 3, 1, 2, 4, 5).reshape(B * G, H * W, N, 2)


def _sample(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (B*G, D, H*W, N): zero padding, pixel centres on integers."""
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def dynamic_sample_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    *,
    dilation: int = 1,
    scale: float | None = None,
) -> torch.Tensor:
    """``ddsm_triton.reference.dynamic_sample_attention`` on ``F.grid_sample``: same
    arguments, shapes ((B, H, W, G, Dk/Dv) maps, (B, H, W, G, N, 2) offsets in grid
    cells), result and gradients. Inputs are not checked here (the public op does)."""
    B, H, W, G, Dk = query.shape
    Dv = value.shape[-1]
    if scale is None:
        scale = Dk**-0.5
    height, width = padded_size(H), padded_size(W)
    with autocast_off(value.device):
        q, k, v, off = (t.to(compute_dtype(value.dtype)) for t in (query, key, value, offsets))
        grid = _normalised_grid(*sample_positions(off, dilation), height, width)
        keys = _sample(_padded_maps(k, height, width), grid)  # (B*G, Dk, H*W, N)
        values = _sample(_padded_maps(v, height, width), grid)  # (B*G, Dv, H*W, N)
        q = q.permute(0, 3, 4, 1, 2).reshape(B * G, Dk, H * W)
        logits = clamp_to_finite(scale * torch.einsum("cdp,cdpn->cpn", q, keys))
        attn = torch.softmax(logits, dim=-1)
        out = torch.einsum("cpn,cdpn->cpd", attn, values)  # (B*G, H*W, Dv)
    # Contiguous (B, H, W, G, Dv), as the other backends return it: the modules view
    # it as a channels_last map without a copy. (A copy of the output only, for G > 1.)
    return out.view(B, G, H, W, Dv).permute(0, 2, 3, 1, 4).contiguous().to(value.dtype)
