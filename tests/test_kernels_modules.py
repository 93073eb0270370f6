"""DDSM on the Triton kernels equals DDSM on the reference (docs/semantics.md §2).

Both branches run the one fused op: the spatial branch with G heads and
Dk = Dv = dim/G, the channel branch on the s x s channel grid with Dk = a*a and
Dv = h'*w'. Same state_dict, same inputs: outputs and every parameter gradient.
"""

from __future__ import annotations

import pytest
import torch
from utils import randomise_offsets

from ddsm_triton import DDSM

F64 = torch.float64


def run(layer: DDSM, backend: str, x_low: torch.Tensor, x_high: torch.Tensor):
    layer.backend = backend
    layer.zero_grad()
    y = layer(x_low, x_high)
    y.backward(torch.ones_like(y) + torch.linspace(0, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [pytest.param(F64, 1e-9, id="float64"), pytest.param(torch.float32, 2e-4, id="float32")],
)
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(dict(dim=16, groups=2, pool_size=4), id="g2-k3"),
        pytest.param(
            dict(dim=9, groups=1, kernel_size=5, dilation=2, pool_size=3, value_down=1),
            id="k5-dil2-dim9",
        ),
    ],
)
def test_triton_module_equals_reference_module(config, dtype, tol):
    layer = randomise_offsets(DDSM(12, 10, **config), std=0.7).to(dtype)
    x_low = torch.randn(2, 12, 7, 6, dtype=dtype)
    x_high = torch.randn(2, 10, 4, 3, dtype=dtype)
    y_ref, g_ref = run(layer, "reference", x_low, x_high)
    y_tri, g_tri = run(layer, "triton", x_low, x_high)
    torch.testing.assert_close(y_tri, y_ref, rtol=tol, atol=tol)
    for name, grad in g_ref.items():
        scale = grad.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(g_tri[name] / scale, grad / scale, rtol=tol, atol=tol, msg=name)


def test_triton_module_state_dict_from_reference_module():
    source = randomise_offsets(DDSM(12, 10, dim=16, groups=4, pool_size=4), std=0.7)
    target = DDSM(12, 10, dim=16, groups=4, pool_size=4, backend="triton")
    target.load_state_dict(source.state_dict())
    x_low, x_high = torch.randn(1, 12, 5, 5), torch.randn(1, 10, 3, 3)
    torch.testing.assert_close(target(x_low, x_high), source(x_low, x_high), rtol=2e-4, atol=2e-4)
