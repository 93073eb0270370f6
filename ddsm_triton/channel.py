"""The channel branch of DDSM (figure panel b): channels laid on an s x s grid
sample each other's high-level descriptors, as pixels do in the spatial branch.

It reuses the spatial branch's op unchanged: the "grid" is s x s channels, a
query/key per channel is its pooled a*a descriptor (Dk = a*a), and a value per
channel is its downsampled high-level map (Dv = h'*w').
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddsm_triton._backend import BackendAttribute
from ddsm_triton._validation import (
    check_channel_sizes,
    check_feature_maps,
    check_odd_square,
    check_positive_int,
)
from ddsm_triton.layout import channel_linear, conv_channels_last, resize, to_offsets
from ddsm_triton.ops import dispatch


class ChannelDynamicAffinity(BackendAttribute, nn.Module):
    """Channel dynamic affinity: attention over N sampled channels.

    Args:
        low_channels: Cl, channels of the detailed map ``x_low``.
        high_channels: Ch, channels of the semantic map ``x_high``.
        dim: number of attended channels, a perfect square s*s; default
            ``low_channels``.
        pool_size: a; queries and keys are (a x a)-pooled channel descriptors.
        channel_kernel_size: kc; each channel samples Nc = kc*kc channels.
        value_down: average-pooling factor of ``x_high`` for the values.
        backend: "auto", "reference", "torch" or "triton"; checked here and whenever
            it is set.

    Shapes: ``x_low`` (B, Cl, H, W), ``x_high`` (B, Ch, h, w) -> (B, Cl, H, W),
    the branch's contribution ``x_c`` (no residual added here).

    Parameters are the convolutions of docs/semantics.md §2.3 (names and shapes are
    the state_dict's); forward applies the 1x1 ones as matmuls in the op's layout.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        dim: int | None = None,
        pool_size: int = 8,
        channel_kernel_size: int = 3,
        value_down: int = 2,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive_int("low_channels", low_channels)
        check_positive_int("high_channels", high_channels)
        hint = "" if dim is not None else " (dim defaults to low_channels; pass a square dim)"
        dim = low_channels if dim is None else dim
        check_positive_int("dim", dim)
        side = math.isqrt(dim)
        if side * side != dim:
            raise ValueError(
                f"dim must be a perfect square s*s for the channel branch, got {dim}{hint}"
            )
        check_channel_sizes(pool_size, channel_kernel_size, value_down, side)
        self.num_samples = channel_kernel_size * channel_kernel_size
        check_odd_square("channel_kernel_size**2", self.num_samples)
        self.low_channels, self.high_channels, self.dim, self.side = (
            low_channels,
            high_channels,
            dim,
            side,
        )
        self.pool_size = pool_size
        self.channel_kernel_size = channel_kernel_size
        self.value_down = value_down
        self.backend = backend

        descriptor = pool_size * pool_size
        self.query = nn.Conv2d(low_channels, dim, 1)
        self.key = nn.Conv2d(low_channels + high_channels, dim, 1)
        self.value = nn.Conv2d(high_channels, dim, 1)
        self.offset = nn.Conv2d(descriptor, 2 * self.num_samples, 3, padding=1)
        self.proj = nn.Conv2d(dim, low_channels, 1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def check_inputs(self, x_low: torch.Tensor, x_high: torch.Tensor) -> None:
        """The checks of docs/semantics.md §3 for a call with these maps (the channel
        grid is fixed at construction, so only the feature maps are left)."""
        check_feature_maps(x_low, x_high, self.low_channels, self.high_channels, self.proj.weight)

    def forward(
        self, x_low: torch.Tensor, x_high: torch.Tensor, *, check: bool = True
    ) -> torch.Tensor:
        """``check=False`` skips ``check_inputs``, for a caller that ran it (DDSM)."""
        if check:
            self.check_inputs(x_low, x_high)
        B = x_low.shape[0]
        s, a = self.side, self.pool_size
        # Every 1x1 convolution here already runs at its input's lowest resolution
        # (pooled maps, down(x_high), and proj before up), so nothing is left to save.
        pooled_low = F.adaptive_avg_pool2d(x_low, a)
        pooled_high = F.adaptive_avg_pool2d(x_high, a)
        # (B, dim, a*a), contiguous in any input memory format: channel c holds an
        # a*a descriptor and sits at (c // s, c % s).
        query = channel_linear(pooled_low, self.query.weight, self.query.bias)
        both = torch.cat([pooled_low, pooled_high], dim=1)
        key = channel_linear(both, self.key.weight, self.key.bias)
        # The offset conv sees the key descriptors as an a*a-channel image on the s x s
        # grid; that view is channels_last, so the offsets come out (B, s, s, 2*Nc).
        offsets = conv_channels_last(self.offset, key.transpose(1, 2).unflatten(2, (s, s)))

        high = self._downsample(x_high)
        value = channel_linear(high, self.value.weight, self.value.bias)  # (B, dim, h'*w')
        out = dispatch(
            query.view(B, s, s, 1, a * a),
            key.view(B, s, s, 1, a * a),
            value.view(B, s, s, 1, value.shape[-1]),
            to_offsets(offsets, 1, self.num_samples),
            dilation=1,
            scale=None,
            backend=self.backend,
        )
        out = channel_linear(
            out.view(B, self.dim, *high.shape[-2:]), self.proj.weight, self.proj.bias
        )
        out = out.unflatten(2, high.shape[-2:])
        if out.shape[-2:] == (1, 1):
            # Bilinear resizing of one pixel is a broadcast; saying so also avoids an
            # inductor assertion (torch 2.13) when compiling a 1x1 -> (H, W) resize.
            return out.expand(-1, -1, *x_low.shape[-2:])
        return resize(out, x_low.shape[-2:])

    def _downsample(self, x: torch.Tensor) -> torch.Tensor:
        """Average pooling by ``value_down``, kept at least 1 x 1.

        Adaptive pooling to (h // value_down, w // value_down) equals plain
        average pooling when the sizes divide, and still covers the whole map
        (rather than dropping the last rows) when they do not.
        """
        if self.value_down == 1:
            return x
        h, w = x.shape[-2:]
        size = (max(1, h // self.value_down), max(1, w // self.value_down))
        return F.adaptive_avg_pool2d(x, size)

    def extra_repr(self) -> str:
        return (
            f"low={self.low_channels}, high={self.high_channels}, dim={self.dim} "
            f"({self.side}x{self.side}), pool_size={self.pool_size}, "
            f"channel_kernel_size={self.channel_kernel_size}, value_down={self.value_down}, "
            f"backend={self.backend!r}"
        )
