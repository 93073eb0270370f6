"""Moving between convolution layout (B, C, H, W) and the op's (B, H, W, G, D).

Both directions are views when the feature map is channels_last in memory, and
a single permute otherwise: the op wants D contiguous so its loads are wide.
"""

from __future__ import annotations

import torch


def to_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, G*D, H, W) -> (B, H, W, G, D); channel c belongs to head c // D."""
    return x.permute(0, 2, 3, 1).unflatten(-1, (groups, -1))


def from_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, G, D) -> (B, G*D, H, W)."""
    return x.flatten(-2).permute(0, 3, 1, 2)


def to_offsets(x: torch.Tensor, groups: int, num_samples: int) -> torch.Tensor:
    """(B, G*N*2, H, W) -> (B, H, W, G, N, 2); channel (g*N + n)*2 + {0: dy, 1: dx}."""
    return x.permute(0, 2, 3, 1).unflatten(-1, (groups, num_samples, 2))
