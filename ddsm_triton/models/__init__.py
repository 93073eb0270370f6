"""Segmentation models built on DDSM.

DDSMFPNHead           SFNet/UPerNet-style FPN decoder, DDSM or add fusion
PyramidPoolingModule  PSPNet context module (bins 1, 2, 3, 6)
UpsampleAdd           the plain FPN fusion step
ConvBNReLU            conv-BN-ReLU block
"""

from ddsm_triton.models.conv import ConvBNReLU
from ddsm_triton.models.fpn_head import DDSMFPNHead
from ddsm_triton.models.fusion import UpsampleAdd, build_fusion, default_ddsm_dim
from ddsm_triton.models.ppm import PyramidPoolingModule

__all__ = [
    "ConvBNReLU",
    "DDSMFPNHead",
    "PyramidPoolingModule",
    "UpsampleAdd",
    "build_fusion",
    "default_ddsm_dim",
]
