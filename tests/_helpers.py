"""Small helpers shared by test files (pytest puts this folder on sys.path)."""

from __future__ import annotations

import math

import torch

from ddsm_triton import DDSM


def randomise_offsets(layer: DDSM, std: float = 0.5) -> DDSM:
    """Give both zero-initialised offset convolutions weights, as training would, so
    samples leave the regular window. Weights are N(0, std^2 / fan_in), biases
    N(0, std^2): offsets of about ``std`` cells."""
    for conv in (layer.spatial.offset, layer.channel.offset):
        torch.nn.init.normal_(conv.weight, std=std / math.sqrt(conv.weight[0].numel()))
        torch.nn.init.normal_(conv.bias, std=std)
    return layer
