"""The spatial branch of DDSM (figure panel a): each low-level pixel samples the
high-level map at N learned positions and pulls its semantics in."""

from __future__ import annotations

import torch
from torch import nn

from ddsm_triton._backend import BackendAttribute
from ddsm_triton._validation import (
    check_bool,
    check_dilation,
    check_feature_maps,
    check_odd_square,
    check_positive_int,
)
from ddsm_triton.layout import (
    conv_channels_last,
    heads_to_rows,
    pixel_linear,
    pixel_rows,
    resize,
    resize_rows,
    rows_to_heads,
    rows_to_map,
    to_offsets,
)
from ddsm_triton.ops import dispatch
from ddsm_triton.position_embedding import sine_position_embedding


class SpatialDynamicAffinity(BackendAttribute, nn.Module):
    """Spatial dynamic affinity: attention over N sampled high-level positions.

    Args:
        low_channels: Cl, channels of the detailed map ``x_low``.
        high_channels: Ch, channels of the semantic map ``x_high``.
        dim: width of query/key/value, default ``low_channels``; split in
            ``groups`` heads.
        kernel_size: k; each pixel samples N = k*k positions (k odd).
        dilation: spacing of the initial k x k window, in pixels.
        groups: attention heads; each predicts its own offsets.
        pos_embed: add fixed sine-cosine position embeddings to both inputs.
        backend: "auto", "reference", "torch" or "triton" (see
            ``dynamic_sample_attention``); checked here and whenever it is set.

    Shapes: ``x_low`` (B, Cl, H, W), ``x_high`` (B, Ch, h, w) -> (B, Cl, H, W),
    the branch's contribution ``x_s`` (no residual added here).

    Parameters are the convolutions of docs/semantics.md §2.2 (names and shapes are
    the state_dict's); forward applies the 1x1 ones as matmuls in the op's layout.
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        dim: int | None = None,
        kernel_size: int = 3,
        dilation: int = 1,
        groups: int = 1,
        pos_embed: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_positive_int("low_channels", low_channels)
        check_positive_int("high_channels", high_channels)
        dim = low_channels if dim is None else dim
        check_positive_int("dim", dim)
        check_positive_int("groups", groups)
        if dim % groups:
            raise ValueError(f"dim must be divisible by groups ({groups}), got {dim}")
        check_positive_int("kernel_size", kernel_size)
        self.num_samples = kernel_size * kernel_size
        check_odd_square("kernel_size**2", self.num_samples)
        self.low_channels, self.high_channels, self.dim = low_channels, high_channels, dim
        self.kernel_size = kernel_size
        # The map size is unknown until forward (check_inputs bounds it again with the
        # map's extent): bound the window alone here.
        self.dilation = check_dilation(dilation, kernel_size, 0, 0)
        self.groups = groups
        self.pos_embed = check_bool("pos_embed", pos_embed)
        self.backend = backend

        both = low_channels + high_channels
        self.query = nn.Conv2d(low_channels, dim, 1)
        self.key = nn.Conv2d(both, dim, 1)
        self.value = nn.Conv2d(high_channels, dim, 1)
        self.offset = nn.Conv2d(both, 2 * groups * self.num_samples, 3, padding=1)
        self.proj = nn.Conv2d(dim, low_channels, 1)
        # A fresh layer samples the regular window; offsets are learned from there.
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def check_inputs(self, x_low: torch.Tensor, x_high: torch.Tensor) -> None:
        """The checks of docs/semantics.md §3 for a call with these maps: the feature
        maps against the parameters, and ``dilation`` against the map's extent."""
        check_feature_maps(x_low, x_high, self.low_channels, self.high_channels, self.proj.weight)
        check_dilation(self.dilation, self.kernel_size, *x_low.shape[-2:])

    def forward(
        self, x_low: torch.Tensor, x_high: torch.Tensor, *, check: bool = True
    ) -> torch.Tensor:
        """``check=False`` skips ``check_inputs``, for a caller that ran it (DDSM)."""
        if check:
            self.check_inputs(x_low, x_high)
        size, high_size = x_low.shape[-2:], x_high.shape[-2:]
        if self.pos_embed:
            x_low = x_low + self._embedding(x_low)
            x_high = x_high + self._embedding(x_high)
        low, high = pixel_rows(x_low), pixel_rows(x_high)  # (B, pixels, C) views

        # A 1x1 convolution commutes with bilinear resizing (its weights sum to 1), so
        # value = Conv1x1(up(x_high')) is computed as up(Conv1x1(x_high')) at x_high's
        # resolution, and so is the x_high' half of the key's weights. Exact, and the
        # parameters are those of docs/semantics.md §2.2. Each projection is written (B, H*W, dim)
        # contiguous, so the op's (B, H, W, G, D) inputs are views, never copies.
        key_low, key_high = self.key.weight.flatten(1).split(
            [self.low_channels, self.high_channels], dim=1
        )
        query = pixel_linear(low, self.query.weight, self.query.bias)
        key = pixel_linear(low, key_low, self.key.bias) + resize_rows(
            pixel_linear(high, key_high), high_size, size
        )
        value = resize_rows(pixel_linear(high, self.value.weight, self.value.bias), high_size, size)
        # A 3x3 convolution does not commute: the offsets need up(x_high') itself.
        # Concatenating pixel rows gives a channels_last map, so the offsets are too.
        both = torch.cat([low, pixel_rows(resize(x_high, size))], dim=2)
        offsets = conv_channels_last(self.offset, rows_to_map(both, size))

        out = dispatch(
            rows_to_heads(query, size, self.groups),
            rows_to_heads(key, size, self.groups),
            rows_to_heads(value, size, self.groups),
            to_offsets(offsets, self.groups, self.num_samples),
            dilation=self.dilation,
            scale=None,
            backend=self.backend,
        )
        return rows_to_map(pixel_linear(heads_to_rows(out), self.proj.weight, self.proj.bias), size)

    @staticmethod
    def _embedding(x: torch.Tensor) -> torch.Tensor:
        _, C, H, W = x.shape
        return sine_position_embedding(C, H, W, dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return (
            f"low={self.low_channels}, high={self.high_channels}, dim={self.dim}, "
            f"k={self.kernel_size}, dilation={self.dilation}, groups={self.groups}, "
            f"pos_embed={self.pos_embed}, backend={self.backend!r}"
        )
