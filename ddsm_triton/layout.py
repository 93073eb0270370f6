"""Moving between convolution layout (B, C, H, W) and the op's (B, H, W, G, D).

The op wants D contiguous, so its loads are wide and its inputs need no copy.
The modules therefore compute their 1x1 projections as batched matrix products
that write the op's layout directly, whatever the memory format of their input:
``pixel_linear`` gives one row per pixel (B, H*W, O) for the spatial branch,
``channel_linear`` one row per channel (B, O, H*W) for the channel branch. BLAS
reads a transposed operand in place, so neither copies its input, in forward or
in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rows_to_heads(rows: torch.Tensor, size: tuple[int, int], groups: int) -> torch.Tensor:
    """(B, H*W, G*D) -> (B, H, W, G, D), a view; channel c belongs to head c // D."""
    return rows.unflatten(1, size).unflatten(-1, (groups, -1))


def heads_to_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, G, D) -> (B, H*W, G*D), a view of a contiguous ``x``."""
    return x.flatten(-2).flatten(1, 2)


def to_offsets(x: torch.Tensor, groups: int, num_samples: int) -> torch.Tensor:
    """(B, G*N*2, H, W) -> (B, H, W, G, N, 2); channel (g*N + n)*2 + {0: dy, 1: dx}."""
    return x.permute(0, 2, 3, 1).unflatten(-1, (groups, num_samples, 2))


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), a view for NCHW and channels_last maps alike."""
    return x.flatten(2).transpose(1, 2)


def rows_to_map(rows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W), a view (channels_last when ``rows`` is contiguous)."""
    return rows.unflatten(1, size).permute(0, 3, 1, 2)


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's (O, C, 1, 1) weight, or a linear one's (O, C), as (O, C)."""
    return weight.flatten(1)


def pixel_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A 1x1 convolution on pixel rows: (B, P, C) -> (B, P, O), contiguous.

    ``rows`` may have any strides BLAS accepts (``pixel_rows`` of an NCHW or a
    channels_last map); ``weight`` is (O, C) or (O, C, 1, 1), ``bias`` (O,).
    """
    B, _, C = rows.shape
    matrix = _matrix(weight).t().expand(B, C, -1)  # (B, C, O), no copy
    if bias is None:
        return torch.bmm(rows, matrix)
    return torch.baddbmm(bias, rows, matrix)


def channel_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A 1x1 convolution written channel-major: (B, C, H, W) -> (B, O, H*W), contiguous."""
    B = x.shape[0]
    matrix = _matrix(weight)
    matrix = matrix.expand(B, *matrix.shape)  # (B, O, C), no copy
    if bias is None:
        return torch.bmm(matrix, x.flatten(2))
    return torch.baddbmm(bias[:, None], matrix, x.flatten(2))


def conv_channels_last(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` in channels_last memory, so ``to_offsets`` of it is a contiguous view.

    A channels_last input alone does not settle the output's format (at batch 1 the
    CPU convolution picked NCHW); a channels_last weight does. Copying the weight
    costs its size, not the feature map's.
    """
    return conv._conv_forward(
        x, conv.weight.contiguous(memory_format=torch.channels_last), conv.bias
    )


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resizing to ``size`` with ``align_corners=False`` (docs/semantics.md §2.2).

    At the same size that resize is the identity, so ``x`` is returned as is. The
    result keeps ``x``'s memory format (channels_last stays channels_last).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_rows(
    rows: torch.Tensor, size: tuple[int, int], new_size: tuple[int, int]
) -> torch.Tensor:
    """``resize`` of pixel rows: (B, h*w, C) on a ``size`` grid -> (B, H*W, C) on
    ``new_size``, contiguous when ``rows`` is."""
    return pixel_rows(resize(rows_to_map(rows, size), new_size))
