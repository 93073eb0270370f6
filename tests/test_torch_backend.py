"""The grid_sample backend ("torch") against the reference, which stays the ground truth.

Float64, 1e-10, output and all four gradients, on the reference's own shape cases,
with random, integer (a fresh layer's zero offsets), far out-of-bounds and
non-finite offsets. Integer positions are where grid_sample's coordinate
normalisation would flip the one-sided offset gradient without the padding trick.
"""

from __future__ import annotations

import pytest
import torch
from utils import F64, OP_CASES, assert_close, poison_offsets
from utils import attention_inputs as make_inputs

from ddsm_triton import dynamic_sample_attention
from ddsm_triton.ops import resolve_backend
from ddsm_triton.torch_backend import padded_size


def _offsets(kind: str, shape: dict) -> torch.Tensor:
    """Offsets of one kind for an OP_CASES shape."""
    size = (shape["B"], shape["H"], shape["W"], shape["G"], shape["N"], 2)
    if kind == "zero":
        return torch.zeros(size, dtype=F64)
    if kind == "integer":
        return torch.randint(-3, 4, size).to(F64)
    if kind == "half-integer":  # x.5: the normalisation must not round these either
        return torch.randint(-3, 4, size).to(F64) + 0.5
    offsets = torch.randn(size, dtype=F64)
    if kind == "far":
        return offsets * 8
    if kind == "poisoned":
        return poison_offsets(offsets)
    return offsets * 1.5


def run(backend: str, inputs, dout: torch.Tensor, **kwargs):
    """Output and the four input gradients of the public op on ``backend``."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = dynamic_sample_attention(*leaves, backend=backend, **kwargs)
    out.backward(dout.to(out.dtype))
    return (out.detach(), *(t.grad for t in leaves))


def assert_same(got, expected) -> None:
    """Output and four gradients equal, within the tolerance of their dtype."""
    names = ("out", "dquery", "dkey", "dvalue", "doffsets")
    for name, g, e in zip(names, got, expected, strict=True):
        assert g.dtype == e.dtype, name
        assert torch.isfinite(g).all(), name
        assert_close(g, e, relative_to_max=True, msg=name)


OFFSETS = ("random", "zero", "integer", "half-integer", "far", "poisoned")


@pytest.mark.parametrize("kind", OFFSETS)
@pytest.mark.parametrize(("shape", "dilation"), OP_CASES)
def test_matches_reference_float64(shape, dilation, kind):
    q, k, v, _ = make_inputs(**shape)
    inputs = (q, k, v, _offsets(kind, shape))
    dout = torch.randn(*q.shape[:4], shape["Dv"], dtype=F64)
    expected = run("reference", inputs, dout, dilation=dilation)
    assert expected[4].abs().sum() > 0 or kind == "poisoned", "vacuous offset gradient"
    assert_same(run("torch", inputs, dout, dilation=dilation), expected)


def test_matches_reference_with_scale_and_large_dilation():
    """A scale other than the default, and a window wider than the map."""
    q, k, v, off = make_inputs(2, 5, 6, 2, 3, 4, 9)
    dout = torch.randn(2, 5, 6, 2, 4, dtype=F64)
    kwargs = dict(dilation=4, scale=-2.5)
    assert_same(
        run("torch", (q, k, v, off), dout, **kwargs),
        run("reference", (q, k, v, off), dout, **kwargs),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision_matches_reference(dtype):
    """Both compute in float32 from the same rounded inputs: equal up to float32
    rounding, and the result rounded to ``dtype`` (gradients too)."""
    inputs = [t.to(dtype) for t in make_inputs(1, 6, 5, 2, 8, 6, 9)]
    dout = torch.randn(1, 6, 5, 2, 6, dtype=F64)
    got, expected = run("torch", inputs, dout), run("reference", inputs, dout)
    assert_same(got, expected)


def test_autocast_does_not_lower_the_compute_dtype():
    """Under CPU autocast to bfloat16, float32 inputs are still computed in float32."""
    inputs = [t.float() for t in make_inputs(1, 4, 5, 1, 6, 6, 9)]
    plain = dynamic_sample_attention(*inputs, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = dynamic_sample_attention(*inputs, backend="torch")
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=0, atol=0)


def test_empty_batch():
    q, k, v, off = make_inputs(0, 3, 3, 2, 4, 5, 9)
    out = dynamic_sample_attention(q, k, v, off, backend="torch")
    assert out.shape == (0, 3, 3, 2, 5)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9, 10, 32, 33, 34, 64, 65, 100, 257])
def test_padded_size_is_a_power_of_two_plus_one(size):
    padded = padded_size(size)
    steps = padded - 1
    assert padded >= max(size, 2)
    assert steps & (steps - 1) == 0, "size - 1 must be a power of two"
    assert padded == 2 or (steps // 2) + 1 < size, "not the smallest such size"


def test_auto_picks_torch_on_cpu_and_triton_on_cuda():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


def test_without_the_padding_integer_offsets_would_disagree(monkeypatch):
    """The check above can fail: with the maps left at their own size (H - 1 = 6,
    W - 1 = 9: not powers of two), grid_sample's normalisation rounds some integer
    positions below the integer, and the one-sided offset gradient flips."""
    import ddsm_triton.torch_backend as backend

    shape = dict(B=1, H=7, W=10, G=1, Dk=4, Dv=4, N=9)
    q, k, v, _ = make_inputs(**shape)
    inputs = (q, k, v, _offsets("integer", shape))
    dout = torch.randn(1, 7, 10, 1, 4, dtype=F64)
    expected = run("reference", inputs, dout)
    monkeypatch.setattr(backend, "padded_size", lambda size: max(size, 2))
    got = run("torch", inputs, dout)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-10, atol=1e-10)  # values agree
    assert (got[4] - expected[4]).abs().max() > 1e-3  # the offset gradient does not


def test_output_is_contiguous_like_the_reference():
    """Modules view the (B, H, W, G, Dv) output as a channels_last map, copy-free."""
    q, k, v, off = make_inputs(2, 3, 4, 3, 2, 5, 9)
    out = dynamic_sample_attention(q, k, v, off, backend="torch")
    assert out.is_contiguous()


@pytest.mark.parametrize("kind", OFFSETS)
@pytest.mark.parametrize(("shape", "dilation"), OP_CASES)
def test_inference_path_matches_reference(shape, dilation, kind):
    """Without a gradient (what exported graphs run) the maps are not padded and
    grid_sample uses align_corners=False: still the reference's numbers, in float64 to
    1e-10, at integer positions and for out-of-bounds and non-finite offsets too."""
    q, k, v, _ = make_inputs(**shape)
    inputs = (q, k, v, _offsets(kind, shape))
    with torch.no_grad():
        got = dynamic_sample_attention(*inputs, dilation=dilation, backend="torch")
        expected = dynamic_sample_attention(*inputs, dilation=dilation, backend="reference")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_padding_is_skipped_exactly_when_no_gradient_is_needed(monkeypatch):
    """The padded path runs under autograd (exact offset gradients), the plain one
    under no_grad and for inputs that require no grad."""
    import ddsm_triton.torch_backend as backend

    calls = []
    monkeypatch.setattr(backend, "padded_size", lambda size: calls.append(size) or 2 * size + 1)
    q, k, v, off = make_inputs(1, 3, 4, 1, 2, 2, 9)
    dynamic_sample_attention(q, k, v, off, backend="torch")
    with torch.no_grad():
        dynamic_sample_attention(q, k, v, off.requires_grad_(), backend="torch")
    assert calls == []
    dynamic_sample_attention(q, k, v, off, backend="torch")
    assert calls == [3, 4]
