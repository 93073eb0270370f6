"""DDSMFPNHead: an SFNet/UPerNet-style FPN decoder whose top-down steps are DDSMs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddsm_triton._validation import check_backend
from ddsm_triton.ddsm import DDSM
from ddsm_triton.models.conv import ConvBNReLU
from ddsm_triton.models.fusion import FUSIONS, build_fusion
from ddsm_triton.models.ppm import PyramidPoolingModule


class DDSMFPNHead(nn.Module):
    """Segmentation decoder for any backbone that returns multi-scale features.

    Given L feature maps ``features[0..L-1]``, finest first (e.g. strides 4, 8, 16,
    32), the head computes, with C = ``channels``:

    1. ``top = PPM(features[L-1])``: pyramid pooling (bins 1, 2, 3, 6) on the
       deepest level; its 3x3 conv-BN-ReLU bottleneck is that level's output conv.
    2. ``lateral[i] = ConvBNReLU1x1(features[i])`` for i < L-1.
    3. Top-down, for i = L-2 down to 0: ``merged[i] = fuse_i(lateral[i], merged[i+1])``
       with ``merged[L-1] = top``. ``fusion="ddsm"`` makes ``fuse_i`` a
       ``DDSM(C, C, ...)`` (``y = x_low + x_s + x_c``: each fine pixel and channel
       samples the coarse map at learned positions); ``fusion="add"`` makes it the
       plain FPN ``x_low + upsample(x_high)``, with everything else equal.
    4. ``out[i] = ConvBNReLU3x3(merged[i])`` for i < L-1, ``out[L-1] = top``.
    5. Every ``out[i]`` is resized (bilinear) to the finest level and concatenated,
       then ``ConvBNReLU3x3(L*C -> C)``, dropout and a 1x1 classifier.

    Args:
        in_channels: channels of each backbone level, finest first (L >= 2).
        num_classes: K, output channels of the classifier.
        channels: C, decoder width. The default 144 = 12**2 lets DDSM use all of
            it (its channel branch needs a square ``dim``).
        fusion: "ddsm" or "add".
        ppm_bins: bin sizes of the pyramid pooling module.
        dropout: Dropout2d probability before the classifier.
        dim, kernel_size, dilation, groups, pool_size, channel_kernel_size,
            value_down, pos_embed, backend: passed to every ``DDSM`` (ignored for
            ``fusion="add"``). ``dim=None`` picks the largest square <= C that
            ``groups`` divides.

    Shapes: ``features[i]`` (B, in_channels[i], H_i, W_i) -> logits
    (B, K, H_0, W_0), or (B, K, *output_size) when ``output_size`` is given.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 144,
        fusion: str = "ddsm",
        ppm_bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        *,
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
        in_channels = list(in_channels)
        if len(in_channels) < 2:
            raise ValueError(f"in_channels must list at least 2 levels, got {in_channels}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.in_channels, self.num_classes, self.channels = in_channels, num_classes, channels
        self.fusion = fusion
        ddsm_kwargs = {
            "dim": dim,
            "kernel_size": kernel_size,
            "dilation": dilation,
            "groups": groups,
            "pool_size": pool_size,
            "channel_kernel_size": channel_kernel_size,
            "value_down": value_down,
            "pos_embed": pos_embed,
            "backend": check_backend(backend),
        }
        finer = in_channels[:-1]
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, ppm_bins)
        self.laterals = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in finer)
        self.fusions = nn.ModuleList(build_fusion(fusion, channels, **ddsm_kwargs) for _ in finer)
        self.outputs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in finer)
        self.fuse = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @property
    def backend(self) -> str | None:
        """The backend of the DDSM layers (None for ``fusion="add"``)."""
        layers = [m for m in self.fusions if isinstance(m, DDSM)]
        return layers[0].backend if layers else None

    @backend.setter
    def backend(self, backend: str) -> None:
        """Switch every DDSM layer; parameters are shared by all backends."""
        check_backend(backend)
        for m in self.fusions:
            if isinstance(m, DDSM):
                m.backend = backend

    def forward(
        self, features: Sequence[torch.Tensor], output_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(
                f"features must hold {len(self.in_channels)} maps (finest first), "
                f"got {len(features)}"
            )
        top = self.ppm(features[-1])
        merged = top
        outs = [top]
        for i in range(len(features) - 2, -1, -1):
            merged = self.fusions[i](self.laterals[i](features[i]), merged)
            outs.append(self.outputs[i](merged))
        outs.reverse()  # finest first
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))
        if output_size is not None:
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"channels={self.channels}, fusion={self.fusion!r}"
        )
