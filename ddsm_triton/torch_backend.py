"""Dynamic sample attention on ``F.grid_sample``: the fast plain-PyTorch backend.

Same op, same numbers as ``ddsm_triton.reference`` (docs/semantics.md §1), several
times faster on CPU (``make bench`` gives the torch/eager ratio): ``grid_sample``
samples the key and value maps at all N positions with one vectorised kernel each
way, where the reference gathers four stacked corners and scatter-adds them back.
It still keeps the N samples of every cell for backward (a quarter of the
reference's saved bytes, about five times the Triton kernels'), which is what the
fused kernels exist to avoid.

Built from standard operators only (grid_sample, einsum, softmax, where, clamp), and
with no Python arithmetic on sizes in inference, so it is the backend that exports:
``torch.export`` with dynamic sizes, and ONNX (see ``ddsm_triton.export``).

Three details make it exact, not just close:

* Positions come from the reference's ``sample_positions``: non-finite ones are moved
  out of bounds (zero sample, zero offset gradient) and huge ones are clamped, before
  ``grid_sample`` sees them.
* ``grid_sample`` takes coordinates normalised to [-1, 1] and multiplies them back by
  a size-dependent factor. For a general size that round trip rounds, and at an
  integer position (every sample of a fresh layer, whose offsets are zero) the floor
  can land one cell lower. The bilinear *value* barely moves (the lower corner gets a
  weight of about 1e-7), but the one-sided offset *gradient* flips. So when a
  gradient is needed, the maps are zero-padded to ``2**m + 1`` rows and columns: the
  scale factors become powers of two and an integer position survives normalisation
  exactly. Padding with zeros changes nothing else, as corners outside the map read
  zero.
* Without a gradient (inference, and every exported graph), the padding buys nothing:
  the maps are sampled at their own size with ``align_corners=False`` (well defined
  for a side of 1, which ``align_corners=True`` is not). The result equals the
  reference to float rounding (relative 1e-6 in float32), and the path needs no
  integer arithmetic on sizes, which ``torch.export`` with dynamic sizes and the ONNX
  exporter cannot trace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddsm_triton._numerics import autocast_off, clamp_to_finite, compute_dtype
from ddsm_triton.reference import sample_positions

__all__ = ["dynamic_sample_attention", "needs_exact_gradients", "padded_size"]


def padded_size(size: int) -> int:
    """The smallest ``2**m + 1 >= size`` with m >= 0 (so at least 2): a side whose
    ``size - 1`` is a power of two, which makes grid_sample's normalisation exact."""
    return 2 ** (max(size, 2) - 2).bit_length() + 1


def needs_exact_gradients(*tensors: torch.Tensor) -> bool:
    """Whether autograd will differentiate through the op: grad mode is on and an input
    requires grad, outside an export. An exported graph is an inference graph (the
    exporters trace with the parameters requiring grad, yet nothing differentiates it),
    so it takes the padding-free path."""
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return False
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _padded_maps(feature: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W, G, D) -> (B*G, D, height, width), zero beyond (H, W): grid_sample's layout."""
    B, H, W, G, D = feature.shape
    maps = feature.new_zeros(B, G, D, height, width)
    maps[..., :H, :W] = feature.permute(0, 3, 4, 1, 2)
    return maps.view(B * G, D, height, width)


def _maps(feature: torch.Tensor) -> torch.Tensor:
    """(B, H, W, G, D) -> (B*G, D, H, W): grid_sample's layout."""
    B, H, W, G, D = feature.shape
    return feature.permute(0, 3, 4, 1, 2).reshape(B * G, D, H, W)


def _grid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Normalised coordinates, each (B, H, W, G, N) in [-1, 1] -> grid_sample's grid
    (B*G, H*W, N, 2) of (x, y)."""
    B, H, W, G, N = x.shape
    return torch.stack([x, y], dim=-1).permute(0, 3, 1, 2, 4, 5).reshape(B * G, H * W, N, 2)


def _sample(maps: torch.Tensor, grid: torch.Tensor, *, align_corners: bool) -> torch.Tensor:
    """Bilinear samples (B*G, D, H*W, N): zero padding, pixel centres on integers."""
    return F.grid_sample(
        maps, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners
    )


def _sample_padded(
    maps: tuple[torch.Tensor, ...], y: torch.Tensor, x: torch.Tensor
) -> list[torch.Tensor]:
    """Samples of each (B, H, W, G, D) map at positions ``y``, ``x`` (B, H, W, G, N), exact
    under autograd at integer positions: maps padded to ``2**m + 1`` per side, where
    ``align_corners=True`` scales by a power of two."""
    H, W = y.shape[1:3]
    height, width = padded_size(H), padded_size(W)
    grid = _grid(x * (2 / (width - 1)) - 1, y * (2 / (height - 1)) - 1)
    return [_sample(_padded_maps(m, height, width), grid, align_corners=True) for m in maps]


def _sample_plain(
    maps: tuple[torch.Tensor, ...], y: torch.Tensor, x: torch.Tensor
) -> list[torch.Tensor]:
    """The same samples for inference: maps at their own size, ``align_corners=False``
    (cell i's centre at ``(2i + 1) / size - 1``); equal up to float rounding, and free of
    integer arithmetic on sizes."""
    H, W = y.shape[1:3]
    grid = _grid((2 * x + 1) / W - 1, (2 * y + 1) / H - 1)
    return [_sample(_maps(m), grid, align_corners=False) for m in maps]


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
    sample = _sample_padded if needs_exact_gradients(query, key, value, offsets) else _sample_plain
    with autocast_off(value.device):
        q, k, v, off = (t.to(compute_dtype(value.dtype)) for t in (query, key, value, offsets))
        keys, values = sample((k, v), *sample_positions(off, dilation))  # (B*G, D, H*W, N)
        q = q.permute(0, 3, 4, 1, 2).reshape(B * G, Dk, H * W)
        logits = clamp_to_finite(scale * torch.einsum("cdp,cdpn->cpn", q, keys))
        attn = torch.softmax(logits, dim=-1)
        out = torch.einsum("cpn,cdpn->cpd", attn, values)  # (B*G, H*W, Dv)
    # Contiguous (B, H, W, G, Dv), as the other backends return it: the modules view
    # it as a channels_last map without a copy. (A copy of the output only, for G > 1.)
    return out.view(B, G, H, W, Dv).permute(0, 2, 3, 1, 4).contiguous().to(value.dtype)
