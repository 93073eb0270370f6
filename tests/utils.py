"""What the test files share: inputs, tolerances, markers and small module helpers.

pytest puts this folder on ``sys.path``, so a test file imports it as ``utils``. It
imports no Triton kernel (conftest.py sets the environment those need first).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import ddsm_triton.channel
import ddsm_triton.spatial
from ddsm_triton import DDSM, ChannelDynamicAffinity, SpatialDynamicAffinity
from ddsm_triton.layout import to_offsets
from ddsm_triton.position_embedding import sine_position_embedding
from ddsm_triton.reference import dynamic_sample_attention as reference_op

F64 = torch.float64

# --------------------------------------------------------------------------- markers
#: The Triton backend as a parameter: on CPU tensors it runs in the interpreter, so the
#: case carries that tier's marker (conftest.py skips it where the interpreter is off).
TRITON = pytest.param("triton", marks=pytest.mark.interpreter, id="triton")
#: Every backend that runs the op on CPU tensors, for ``parametrize("backend", ...)``.
BACKENDS = ("reference", "torch", TRITON)


def cuda_param(*values: object, id: str) -> pytest.ParameterSet:
    """A parameter set on a CUDA device: part of the CUDA tier, skipped without CUDA."""
    no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.param(*values, id=id, marks=(pytest.mark.cuda, no_cuda))


# --------------------------------------------------------------------------- inputs
def attention_inputs(
    B: int = 1,
    H: int = 3,
    W: int = 4,
    G: int = 2,
    Dk: int = 4,
    Dv: int = 5,
    N: int = 9,
    *,
    spread: float = 1.5,
    dtype: torch.dtype = F64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random query, key, value (B, H, W, G, D) and offsets (B, H, W, G, N, 2), the
    offsets N(0, spread^2) cells: most samples fractional, some out of bounds."""
    query, key = (torch.randn(B, H, W, G, Dk, dtype=dtype) for _ in range(2))
    value = torch.randn(B, H, W, G, Dv, dtype=dtype)
    offsets = torch.randn(B, H, W, G, N, 2, dtype=dtype) * spread
    return query, key, value, offsets


def poison_offsets(off: torch.Tensor) -> torch.Tensor:
    """Put NaN, +-Inf and huge finite values in some offsets."""
    flat = off.view(-1)
    bad = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30], dtype=off.dtype)
    idx = torch.randperm(flat.numel())[: max(5, flat.numel() // 8)]
    flat[idx] = bad.repeat(len(idx) // 5 + 1)[: len(idx)]
    return off


#: Op shapes (B, H, W, G, Dk, Dv, N) and a dilation, covering N = 1, k = 5, heads,
#: Dv != Dk and one-row/one-column maps.
OP_CASES = [
    pytest.param(dict(B=2, H=5, W=6, G=1, Dk=4, Dv=4, N=9), 1, id="k3"),
    pytest.param(dict(B=1, H=4, W=5, G=2, Dk=3, Dv=3, N=1), 1, id="n1"),
    pytest.param(dict(B=1, H=7, W=6, G=1, Dk=5, Dv=5, N=25), 2, id="k5-dilation2"),
    pytest.param(dict(B=2, H=4, W=3, G=4, Dk=3, Dv=7, N=9), 1, id="heads4-dv-ne-dk"),
    pytest.param(dict(B=1, H=1, W=7, G=2, Dk=4, Dv=3, N=9), 1, id="h1"),
    pytest.param(dict(B=1, H=6, W=1, G=1, Dk=2, Dv=5, N=9), 3, id="w1"),
]


def features(
    B: int = 2,
    Cl: int = 16,
    Ch: int = 12,
    H: int = 10,
    W: int = 9,
    h: int = 5,
    w: int = 4,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A module's inputs: ``x_low`` (B, Cl, H, W) and ``x_high`` (B, Ch, h, w)."""
    x_low = torch.randn(B, Cl, H, W, dtype=dtype, device=device)
    x_high = torch.randn(B, Ch, h, w, dtype=dtype, device=device)
    return x_low.to(memory_format=memory_format), x_high.to(memory_format=memory_format)


def randomise_offsets(layer: DDSM, std: float = 0.5) -> DDSM:
    """Give both zero-initialised offset convolutions weights, as training would, so
    samples leave the regular window. Weights are N(0, std^2 / fan_in), biases
    N(0, std^2): offsets of about ``std`` cells."""
    for conv in (layer.spatial.offset, layer.channel.offset):
        torch.nn.init.normal_(conv.weight, std=std / math.sqrt(conv.weight[0].numel()))
        torch.nn.init.normal_(conv.bias, std=std)
    return layer


def replace_op(monkeypatch: pytest.MonkeyPatch, op: Callable[..., torch.Tensor]) -> None:
    """Make both branches call ``op`` (same signature as ``ddsm_triton.ops.dispatch``)
    instead of the op, e.g. to record what they pass it."""
    monkeypatch.setattr(ddsm_triton.spatial, "dispatch", op)
    monkeypatch.setattr(ddsm_triton.channel, "dispatch", op)


# --------------------------------------------------------------------------- the module, literally
# docs/semantics.md §2 written out as it states it, every convolution at full resolution
# on the reference op: an independent computation of what the modules must return.
def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _embedded(x: torch.Tensor) -> torch.Tensor:
    _, C, H, W = x.shape
    return x + sine_position_embedding(C, H, W, dtype=x.dtype, device=x.device)


def literal_spatial(
    m: SpatialDynamicAffinity, x_low: torch.Tensor, x_high: torch.Tensor
) -> torch.Tensor:
    """The spatial branch (docs/semantics.md §2.2) with ``m``'s convolutions."""
    size = x_low.shape[-2:]
    xl = _embedded(x_low) if m.pos_embed else x_low
    xh = _up(_embedded(x_high) if m.pos_embed else x_high, size)
    both = torch.cat([xl, xh], dim=1)

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, G*D, H, W) -> (B, H, W, G, D)
        return t.permute(0, 2, 3, 1).unflatten(-1, (m.groups, -1))

    out = reference_op(
        heads(m.query(xl)),
        heads(m.key(both)),
        heads(m.value(xh)),
        to_offsets(m.offset(both), m.groups, m.num_samples),
        dilation=m.dilation,
    )
    return m.proj(out.flatten(-2).permute(0, 3, 1, 2))


def literal_channel(
    m: ChannelDynamicAffinity, x_low: torch.Tensor, x_high: torch.Tensor
) -> torch.Tensor:
    """The channel branch (docs/semantics.md §2.3) with ``m``'s convolutions."""
    B, s, a = x_low.shape[0], m.side, m.pool_size
    pooled_low = F.adaptive_avg_pool2d(x_low, a)
    pooled = torch.cat([pooled_low, F.adaptive_avg_pool2d(x_high, a)], dim=1)
    query, key = m.query(pooled_low).flatten(2), m.key(pooled).flatten(2)
    offsets = m.offset(key.transpose(1, 2).reshape(B, a * a, s, s))
    h, w = x_high.shape[-2:]
    down = F.adaptive_avg_pool2d(x_high, (max(1, h // m.value_down), max(1, w // m.value_down)))
    value = m.value(down)
    out = reference_op(
        query.reshape(B, s, s, 1, a * a),
        key.reshape(B, s, s, 1, a * a),
        value.reshape(B, s, s, 1, -1),
        to_offsets(offsets, 1, m.num_samples),
    )
    return _up(m.proj(out.reshape(value.shape)), x_low.shape[-2:])


def literal_ddsm(m: DDSM, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
    """DDSM (docs/semantics.md §2.4): ``x_low + x_s + x_c``."""
    spatial, channel = (
        literal_spatial(m.spatial, x_low, x_high),
        literal_channel(m.channel, x_low, x_high),
    )
    return x_low + spatial + channel


# --------------------------------------------------------------------------- tolerances
#: (rtol, atol) of a result against the float64 reference, by the dtype it was
#: computed from. Half types compute in float32 on both sides and differ by about one
#: rounding of the output dtype; float32 by summation order; float64 by rounding.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(
    got: torch.Tensor,
    want: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    relative_to_max: bool = False,
    msg: str = "",
) -> None:
    """``got`` equals ``want`` within ``TOLERANCE[dtype]`` (default: ``got``'s dtype),
    compared in float64. With ``relative_to_max`` the absolute tolerance scales with
    the largest magnitude of ``want`` (for gradients, whose size varies)."""
    rtol, atol = TOLERANCE[dtype or got.dtype]
    assert got.shape == want.shape, f"{msg}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all() or not torch.isfinite(want).all(), f"{msg}: non-finite"
    if relative_to_max and want.numel():
        atol *= max(1.0, want.abs().max().item())
    torch.testing.assert_close(
        got.double(), want.double(), rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}"
    )
