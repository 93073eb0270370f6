"""CUDA tier: the custom ops, torch.compile and the DDSM module on CUDA tensors.

* ``torch.library.opcheck`` of every ``ddsm::`` op, on the arguments the public op
  really passes (recorded while it runs forward and backward, atomic and deterministic);
* ``torch.compile(fullgraph=True)`` of ``DDSM(backend="triton")``: output and every
  gradient equal eager (inductor on CPU once dropped a gradient silently);
* ``DDSM(backend="triton")`` against ``DDSM(backend="reference")`` in float64.

Skipped without a GPU; ``DDSM_CUDA_DRY_RUN=1`` runs it on CPU with tiny shapes.
"""

from __future__ import annotations

import pytest
import torch
from _cuda_tier import (
    COMPILE_BACKEND,
    DEVICE,
    DRY_RUN,
    DdsmOpCalls,
    Shape,
    make_inputs,
    sized,
)
from utils import randomise_offsets

from ddsm_triton import DDSM, dynamic_sample_attention

pytestmark = pytest.mark.cuda


def _recorded_op_calls(deterministic: bool) -> dict[str, tuple]:
    """Run the public op forward and backward and record each ddsm:: op's arguments."""
    shape = sized(Shape(2, 24, 20, 2, 32, 24, 3), Shape(1, 3, 4, 2, 6, 5, 3))
    inputs = make_inputs(shape, torch.float32, spread=0.8)
    torch.use_deterministic_algorithms(deterministic)
    try:
        with DdsmOpCalls() as log:
            out = dynamic_sample_attention(*inputs, backend="triton")
            out.backward(torch.randn_like(out))
    finally:
        torch.use_deterministic_algorithms(False)
    return log.calls


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_opcheck_every_ddsm_op_on_the_device(deterministic: bool) -> None:
    calls = _recorded_op_calls(deterministic)
    assert {"ddsm::dsa_forward", "ddsm::dsa_backward"} <= set(calls), sorted(calls)
    for name, (func, args, kwargs) in calls.items():
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        assert all(t.device.type == DEVICE.type for t in tensors), name
        if name.endswith("forward"):  # the autograd-facing op: inputs that require grad
            args = tuple(
                a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args
            )
        torch.library.opcheck(func, args, kwargs)


def _layer(dtype: torch.dtype, backend: str) -> DDSM:
    """A DDSM with learned-looking offsets (fractional, partly out of bounds)."""
    if DRY_RUN:
        layer = DDSM(12, 10, dim=16, groups=2, pool_size=4, backend=backend)
    else:  # spatial: G=4, D=16; channel: 8x8 grid, Dk=64, Dv=16*24 values
        layer = DDSM(48, 32, dim=64, groups=4, pool_size=8, backend=backend)
    return randomise_offsets(layer, std=0.7).to(device=DEVICE, dtype=dtype)


def _features(layer: DDSM, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x_low (B, Cl, H, W) and x_high one pyramid level coarser."""
    B, H, W = (1, 7, 6) if DRY_RUN else (2, 64, 96)
    low, high = layer.spatial.low_channels, layer.spatial.high_channels
    x_low = torch.randn(B, low, H, W, dtype=dtype, device=DEVICE)
    x_high = torch.randn(B, high, (H + 1) // 2, (W + 1) // 2, dtype=dtype, device=DEVICE)
    return x_low, x_high


def _step(layer: torch.nn.Module, x_low: torch.Tensor, x_high: torch.Tensor) -> dict:
    """Output and the gradients of every parameter and both inputs, by name."""
    layer.zero_grad(set_to_none=True)
    x_low, x_high = x_low.clone().requires_grad_(), x_high.clone().requires_grad_()
    y = layer(x_low, x_high)
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)
    (y * weight).sum().backward()
    results = {"out": y.detach(), "x_low": x_low.grad, "x_high": x_high.grad}
    results.update({n.removeprefix("_orig_mod."): p.grad for n, p in layer.named_parameters()})
    return results


def _assert_same(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        assert w.abs().sum() > 0, f"{name}: the expected gradient is zero, the check is vacuous"
        scale = w.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(got[name] / scale, w / scale, rtol=tol, atol=tol, msg=name)


def test_triton_module_equals_reference_module_float64() -> None:
    layer = _layer(torch.float64, "reference")
    x_low, x_high = _features(layer, torch.float64)
    want = _step(layer, x_low, x_high)
    layer.backend = "triton"
    _assert_same(_step(layer, x_low, x_high), want, 1e-9)


@pytest.fixture
def no_tf32():
    """Full float32 convolutions and matmuls: with TF32 (cuDNN's default) eager and
    inductor may pick different algorithms and differ by ~1e-3, hiding nothing real."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    yield
    cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_compiled_module_matches_eager_output_and_every_gradient(no_tf32) -> None:
    torch._dynamo.reset()
    layer = _layer(torch.float32, "triton")
    x_low, x_high = _features(layer, torch.float32)
    want = _step(layer, x_low, x_high)
    compiled = torch.compile(layer, fullgraph=True, backend=COMPILE_BACKEND)
    _assert_same(_step(compiled, x_low, x_high), want, 1e-4)
