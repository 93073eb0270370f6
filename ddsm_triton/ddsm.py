"""DDSM: the spatial and channel branches fused into a residual layer."""

from __future__ import annotations

import torch
from torch import nn

from ddsm_triton.channel import ChannelDynamicAffinity
from ddsm_triton.spatial import SpatialDynamicAffinity


class DDSM(nn.Module):
    """Dynamic Dual Sampling Module: ``y = x_low + x_s + x_c``.

    Fuses a semantic, low-resolution map into a detailed, high-resolution one.
    Each low-level pixel samples N learned positions of the high-level map and
    attends over them (spatial branch); channels do the same on an s x s
    channel grid (channel branch). See ``SpatialDynamicAffinity`` and
    ``ChannelDynamicAffinity`` for the arguments; ``dim`` must be divisible by
    ``groups`` and a perfect square.

    Shapes: ``x_low`` (B, Cl, H, W), ``x_high`` (B, Ch, h, w) -> (B, Cl, H, W).
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        dim: int | None = None,
        kernel_size: int = 3,
        dilation: int = 1,
        groups: int = 1,
        pool_size: int = 8,
        channel_kernel_size: int = 3,
        value_down: int = 2,
        pos_embed: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.spatial = SpatialDynamicAffinity(
            low_channels, high_channels, dim, kernel_size, dilation, groups, pos_embed, backend
        )
        self.channel = ChannelDynamicAffinity(
            low_channels, high_channels, dim, pool_size, channel_kernel_size, value_down, backend
        )

    @property
    def backend(self) -> str:
        return self.spatial.backend

    @backend.setter
    def backend(self, backend: str) -> None:
        """Switch both branches (each checks the name); the parameters are the same
        for every backend."""
        self.spatial.backend = self.channel.backend = backend

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        # One check for both branches: they share the inputs and their channel counts,
        # and the spatial branch's check also bounds its dilation by the map's extent.
        self.spatial.check_inputs(x_low, x_high)
        x_s = self.spatial(x_low, x_high, check=False)
        return x_low + x_s + self.channel(x_low, x_high, check=False)
