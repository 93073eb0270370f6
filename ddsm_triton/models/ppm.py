"""Pyramid pooling module (PSPNet), as UPerNet and SFNet put it on the deepest level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddsm_triton.models.conv import ConvBNReLU


class PyramidPoolingModule(nn.Module):
    """Context from average pools at several bin sizes, fused with the input.

    For each bin size b, the input is average-pooled to b x b, reduced by a 1x1
    conv-BN-ReLU to ``channels``, and resized back (bilinear, ``align_corners=False``).
    The input and all pooled maps are concatenated and fused by a 3x3 conv-BN-ReLU.

    Args:
        in_channels: C_in, channels of the deepest backbone feature.
        channels: C, output channels (and the width of every pooled branch).
        bins: pool output sizes; PSPNet/UPerNet use (1, 2, 3, 6).

    Shapes: (B, C_in, H, W) -> (B, C, H, W).

    Like every BatchNorm after a global pool, the 1 x 1 branch needs more than one
    sample per batch in training mode.
    """

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        if not bins or any(b < 1 for b in bins):
            raise ValueError(f"bins must be a non-empty sequence of positive ints, got {bins}")
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, channels, 1))
            for b in self.bins
        )
        self.bottleneck = ConvBNReLU(in_channels + len(self.bins) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))
