"""Automatic mixed precision: DDSM under torch.autocast.

Policy: the 1x1/3x3 convolutions run in the autocast dtype, so all four inputs
of the op arrive in that one dtype; the op computes in float32 internally (with
autocast off inside it) and returns that dtype; the residual sum promotes back
to the input dtype.
"""

from __future__ import annotations

import pytest
import torch
from utils import BACKENDS, cuda_param, randomise_offsets, replace_op

from ddsm_triton import DDSM, dynamic_sample_attention
from ddsm_triton.ops import dispatch

# (device, autocast dtype): CPU bfloat16 runs everywhere, the CUDA ones where CUDA is.
AUTOCASTS = [
    pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16"),
    cuda_param("cuda", torch.float16, id="cuda-float16"),
    cuda_param("cuda", torch.bfloat16, id="cuda-bfloat16"),
]


def _layer(backend: str, device: str) -> DDSM:
    layer = DDSM(8, 12, dim=16, groups=2, pool_size=2, backend=backend)
    return randomise_offsets(layer).to(device)


@pytest.mark.parametrize(("device", "dtype"), AUTOCASTS)
def test_op_receives_one_dtype_under_autocast(
    device: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[torch.dtype, ...]] = []

    def spy(*tensors: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.append(tuple(t.dtype for t in tensors))
        return dispatch(*tensors, **kwargs)

    replace_op(monkeypatch, spy)
    layer = _layer("reference", device)
    x_low, x_high = torch.randn(2, 8, 8, 8, device=device), torch.randn(2, 12, 4, 4, device=device)
    with torch.autocast(device, dtype=dtype):
        y = layer(x_low, x_high)
    assert seen == [(dtype,) * 4, (dtype,) * 4]  # spatial, then channel branch
    assert y.dtype == torch.float32  # x_low + bf16 branches promotes to the input dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("device", "dtype"), AUTOCASTS)
def test_op_computes_in_float32_whatever_the_autocast_state(
    backend: str, device: str, dtype: torch.dtype
) -> None:
    """Same half inputs, autocast on or off: the same result, the float32 one rounded."""
    q, k = (torch.randn(2, 5, 5, 2, 16, device=device).to(dtype) for _ in range(2))
    v = torch.randn(2, 5, 5, 2, 8, device=device).to(dtype)
    off = (0.7 * torch.randn(2, 5, 5, 2, 9, 2, device=device)).to(dtype)
    plain = dynamic_sample_attention(q, k, v, off, backend=backend)
    with torch.autocast(device, dtype=dtype):
        autocast = dynamic_sample_attention(q, k, v, off, backend=backend)
    assert plain.dtype == autocast.dtype == dtype
    torch.testing.assert_close(autocast, plain, rtol=0, atol=0)
    exact = dynamic_sample_attention(*(t.double() for t in (q, k, v, off)), backend="reference").to(
        dtype
    )
    torch.testing.assert_close(plain, exact, rtol=2**-7, atol=1e-3)  # <= 1 bf16 ulp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("device", "dtype"), AUTOCASTS)
def test_ddsm_trains_under_autocast(backend: str, device: str, dtype: torch.dtype) -> None:
    layer = _layer(backend, device)
    head = torch.nn.Conv2d(8, 3, 1).to(device)
    params = [*layer.parameters(), *head.parameters()]
    optimiser = torch.optim.Adam(params, lr=1e-2)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    # Batch 1: one Triton program per launch keeps the interpreter quick.
    x_low, x_high = torch.randn(1, 8, 8, 8, device=device), torch.randn(1, 12, 4, 4, device=device)
    target = torch.randint(0, 3, (1, 8, 8), device=device)
    losses = []
    for _ in range(3):
        with torch.autocast(device, dtype=dtype):
            logits = head(layer(x_low, x_high))
            loss = torch.nn.functional.cross_entropy(logits, target)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimiser)
        for p in params:
            assert p.grad is not None and p.grad.dtype == torch.float32
            assert torch.isfinite(p.grad).all()
        scaler.step(optimiser)
        scaler.update()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0], losses
