"""ddsm-triton: the Dynamic Dual Sampling Module as fused Triton kernels.

Public API (what each computes: docs/semantics.md):
    DDSM, SpatialDynamicAffinity, ChannelDynamicAffinity  (nn.Modules)
    dynamic_sample_attention                              (the core op)
    ddsm_triton.models                                    (a DDSM FPN segmentation head)
    ddsm_triton.reference                                 (pure-PyTorch ground truth)
"""

from ddsm_triton.channel import ChannelDynamicAffinity
from ddsm_triton.ddsm import DDSM
from ddsm_triton.ops import dynamic_sample_attention, resolve_backend
from ddsm_triton.position_embedding import sine_position_embedding
from ddsm_triton.spatial import SpatialDynamicAffinity

__all__ = [
    "DDSM",
    "ChannelDynamicAffinity",
    "SpatialDynamicAffinity",
    "dynamic_sample_attention",
    "resolve_backend",
    "sine_position_embedding",
]
__version__ = "0.1.0"
