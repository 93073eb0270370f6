"""Fixed 2-D sine-cosine position embedding (DETR style), any resolution."""

from __future__ import annotations

import math

import torch

from ddsm_triton._numerics import compute_dtype

TEMPERATURE = 10000.0


def sine_position_embedding(
    channels: int, height: int, width: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A (1, channels, height, width) embedding, broadcastable over the batch.

    Row and column indices are normalised to (0, 2*pi] as in DETR
    (``(i + 1) / H * 2*pi``), so the embedding describes relative position and
    works at any resolution. With F = channels // 4 frequencies, channels
    [0, 2F) hold the row embedding and [2F, 4F) the column embedding, each as
    interleaved (sin, cos) pairs at frequencies ``TEMPERATURE ** (-f / F)``;
    the last ``channels % 4`` channels are zero. Computed in float32 (float64
    for float64), then cast to ``dtype``.
    """
    compute = compute_dtype(dtype)
    num_freq = channels // 4
    embedding = torch.zeros(1, channels, height, width, dtype=compute, device=device)
    if num_freq == 0:
        return embedding.to(dtype)
    f = torch.arange(num_freq, dtype=compute, device=device)
    inv_freq = TEMPERATURE ** (-f / num_freq)
    rows = (torch.arange(height, dtype=compute, device=device) + 1) / height * (2 * math.pi)
    cols = (torch.arange(width, dtype=compute, device=device) + 1) / width * (2 * math.pi)

    def encode(coord: torch.Tensor) -> torch.Tensor:  # (L,) -> (2F, L), (sin, cos) pairs
        angle = inv_freq[:, None] * coord[None, :]
        return torch.stack([angle.sin(), angle.cos()], dim=1).flatten(0, 1)

    embedding[0, : 2 * num_freq] = encode(rows)[:, :, None]
    embedding[0, 2 * num_freq : 4 * num_freq] = encode(cols)[:, None, :]
    return embedding.to(dtype)
