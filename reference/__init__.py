"""Pure-PyTorch references: exact, readable, slow. The kernels are tested against these."""

from .dynamic_sample_attention import (
    base_grid,
    bilinear_sample,
    dynamic_sample_attention,
    sample_positions,
)

__all__ = ["base_grid", "bilinear_sample", "dynamic_sample_attention", "sample_positions"]
