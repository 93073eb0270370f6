"""Pure-PyTorch references: exact, readable, slow. The kernels are tested against these."""

from .dynamic_sample_attention import (
    autocast_off,
    base_grid,
    bilinear_sample,
    clamp_to_finite,
    compute_dtype,
    dynamic_sample_attention,
    sample_positions,
)

__all__ = [
    "autocast_off",
    "base_grid",
    "bilinear_sample",
    "clamp_to_finite",
    "compute_dtype",
    "dynamic_sample_attention",
    "sample_positions",
]
