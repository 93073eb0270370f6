"""Top-down fusion steps of an FPN: fold a coarse, semantic map into a finer one.

Both steps share one signature, ``fuse(x_low, x_high) -> (B, C, H, W)``, with
``x_low`` (B, C, H, W) the finer lateral and ``x_high`` (B, C, h, w) the coarser
top-down map, so a decoder can swap them with everything else equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddsm_triton.ddsm import DDSM

FUSIONS = ("ddsm", "add")


class UpsampleAdd(nn.Module):
    """The plain FPN step: ``x_low + bilinear_resize(x_high, size of x_low)``.

    Shapes: ``x_low`` (B, C, H, W), ``x_high`` (B, C, h, w) -> (B, C, H, W).
    """

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x_high, size=x_low.shape[-2:], mode="bilinear", align_corners=False)
        return x_low + up


def default_ddsm_dim(channels: int, groups: int = 1) -> int:
    """The largest perfect square <= ``channels`` that ``groups`` divides.

    DDSM's channel branch lays its ``dim`` channels on an s x s grid, so ``dim``
    must be a square; this picks the widest one that fits (``channels`` itself
    when it is a square, e.g. 64 or 144).
    """
    for side in range(math.isqrt(channels), 0, -1):
        if (side * side) % groups == 0:
            return side * side
    raise ValueError(
        f"no perfect square <= channels ({channels}) is divisible by groups ({groups})"
    )


def build_fusion(fusion: str, channels: int, **ddsm_kwargs: object) -> nn.Module:
    """A fusion step on ``channels``-wide maps.

    Args:
        fusion: "ddsm" (a ``DDSM(channels, channels, **ddsm_kwargs)``; ``dim``
            defaults to ``default_ddsm_dim(channels, groups)``) or "add"
            (``UpsampleAdd``; ``ddsm_kwargs`` are ignored).
        channels: C, channels of both maps.
    """
    if fusion == "add":
        return UpsampleAdd()
    if fusion == "ddsm":
        kwargs = dict(ddsm_kwargs)
        if kwargs.get("dim") is None:
            kwargs["dim"] = default_ddsm_dim(channels, int(kwargs.get("groups", 1)))  # type: ignore[arg-type]
        return DDSM(channels, channels, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
