"""CUDA tier: the compiled Triton op against the float64 reference at real sizes.

Forward and all four gradients on the same inputs; grids of several waves (at least
``PROGRAMS_PER_SM`` programs per SM), several value tiles and key chunks, G in {1, 4},
D in {16, 64, 256}, N in {1, 9, 25}, the channel branch's wide values, all four dtypes,
the atomic and the deterministic backward, non-finite and huge offsets, strided and
channels_last inputs, an empty batch, and a backward through a fresh autotuning.

Each distinct (dtype, Dk, Dv, N) compiles and autotunes every kernel once, so the set of
shapes is kept small: the tier must stay within ~3 minutes on an H100, compiles included.
Skipped without a GPU; ``DDSM_CUDA_DRY_RUN=1`` runs it on CPU with the tiny shapes.
"""

from __future__ import annotations

import pytest
import torch
from _cuda_tier import (
    DEVICE,
    NAMES,
    TOLERANCE,
    WAVES,
    Shape,
    assert_close,
    check_against_reference,
    forward_backward,
    make_inputs,
    reference_results,
    sized,
)

from ddsm_triton import dynamic_sample_attention

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernel output buffers start as NaN, so an element left unwritten shows up."""
    monkeypatch.setenv("DDSM_POISON_OUTPUTS", "1")


# (real, tiny): real shapes are sized for the GPU, tiny ones for the interpreter.
WAVES_G1 = (Shape(2, WAVES, 128, 1, 64, 64, 3), Shape(1, 5, 6, 1, 8, 8, 3))
CHANNEL_WIDE = (Shape(2, 16, 16, 1, 64, 2088, 3), Shape(1, 3, 3, 1, 6, 300, 3))
F64_SHAPES = [
    pytest.param(WAVES_G1, id="waves-g1-d64-n9"),
    pytest.param(
        (Shape(2, WAVES, 128, 4, 16, 16, 5, 2), Shape(1, 4, 5, 4, 4, 4, 5, 2)),
        id="waves-g4-d16-n25-dil2",
    ),
    pytest.param(
        (Shape(2, WAVES, 128, 1, 256, 256, 1), Shape(1, 3, 4, 1, 6, 7, 1)),
        id="waves-d256-n1-key-chunks-value-tiles",
    ),
    # The channel branch at Cityscapes stride 8: a 16x16 channel grid, 2048+ values.
    pytest.param(CHANNEL_WIDE, id="channel-wide-dv2088"),
    pytest.param((Shape(3, 7, 333, 1, 70, 37, 3), Shape(1, 2, 7, 1, 5, 3, 3)), id="odd-dk70-dv37"),
]
HALF_AND_SINGLE = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("shapes", F64_SHAPES)
def test_float64_matches_reference(shapes: tuple[Shape, Shape]) -> None:
    shape = sized(*shapes)
    check_against_reference(make_inputs(shape, torch.float64), dilation=shape.dilation)


@pytest.mark.parametrize("shapes", [WAVES_G1, CHANNEL_WIDE], ids=["waves-g1-d64-n9", "channel"])
@pytest.mark.parametrize("dtype", HALF_AND_SINGLE, ids=str)
def test_dtype_matches_float64_reference_of_the_same_inputs(
    dtype: torch.dtype, shapes: tuple[Shape, Shape]
) -> None:
    shape = sized(*shapes)
    check_against_reference(make_inputs(shape, dtype), dilation=shape.dilation)


def _converging_offsets(shape: Shape, dtype: torch.dtype) -> torch.Tensor:
    """Offsets that send every sample of every cell near the map's centre (within one
    cell, off the integers): thousands of programs add into the same few map rows at
    once, which is where atomic adds race and their order changes the float32 sum."""
    s = shape
    k = s.k
    i = torch.arange(s.H, dtype=torch.float64, device=DEVICE).view(1, s.H, 1, 1, 1)
    j = torch.arange(s.W, dtype=torch.float64, device=DEVICE).view(1, 1, s.W, 1, 1)
    n = torch.arange(k * k, device=DEVICE)
    ry = ((n // k) - (k - 1) / 2).double() * s.dilation
    rx = ((n % k) - (k - 1) / 2).double() * s.dilation
    size = (s.B, s.H, s.W, s.G, k * k)
    jitter = lambda: torch.rand(size, dtype=torch.float64, device=DEVICE) * 0.8 + 0.1  # noqa: E731
    dy = (s.H - 1) / 2 + jitter() - i - ry
    dx = (s.W - 1) / 2 + jitter() - j - rx
    return torch.stack([dy, dx], dim=-1).to(dtype).requires_grad_()


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_deterministic_backward_is_bitwise_reproducible_where_atomics_race(deterministic) -> None:
    shape = sized(*WAVES_G1)
    dtype = torch.float32
    inputs = make_inputs(shape, dtype)
    inputs[3] = _converging_offsets(shape, dtype)
    grad_out = torch.randn(inputs[2].shape, device=DEVICE)
    first, second = (forward_backward(inputs, grad_out) for _ in range(2))
    for name, a, b in zip(NAMES, first, second, strict=True):
        assert torch.equal(a, b), f"deterministic {name} differs between two runs"
    torch.use_deterministic_algorithms(False)
    atomic = forward_backward(inputs, grad_out)
    want = reference_results(inputs, grad_out)
    assert_close(first, want, dtype, what="deterministic")
    assert_close(atomic, want, dtype, what="atomic")


BAD_OFFSETS = (float("nan"), float("inf"), float("-inf"), 1e30, -1e30)


def test_non_finite_and_huge_offsets_sample_zero() -> None:
    """Some samples of many cells, and every sample of a few cells, at NaN, +-Inf or
    +-1e30: those samples contribute zero and pass zero gradient to their offsets."""
    shape = sized(*WAVES_G1)
    inputs = make_inputs(shape, torch.float32)
    bad = torch.zeros(inputs[3].shape[:-1], dtype=torch.bool, device=DEVICE)  # per sample
    with torch.no_grad():
        for b, value in enumerate(BAD_OFFSETS):
            hit = torch.rand(bad.shape, device=DEVICE) < 0.02
            coord = torch.randint(0, 2, bad.shape, device=DEVICE)
            for c in (0, 1):
                inputs[3][..., c][hit & (coord == c)] = value
            bad |= hit
            whole = (0, b % shape.H, (3 * b) % shape.W)  # every sample, every head
            inputs[3][whole] = value
            bad[whole] = True
    out, *_, doff = check_against_reference(inputs)
    assert doff[bad].abs().max() == 0
    for b in range(len(BAD_OFFSETS)):
        assert out[0, b % shape.H, (3 * b) % shape.W].abs().max() == 0


def test_non_contiguous_and_channels_last_inputs() -> None:
    """A permuted NCHW conv output, a strided channel slice, a cropped channels_last
    activation and permuted offsets: none contiguous as (B, H, W, G, D)."""
    s = sized(Shape(2, 40, 56, 4, 16, 16, 5), Shape(1, 5, 4, 2, 6, 3, 3))
    N = s.k * s.k

    def nchw(channels: int, width: int) -> torch.Tensor:
        return torch.randn(s.B, channels, s.H, width, dtype=torch.float64, device=DEVICE)

    query = nchw(s.G * s.Dk, s.W).view(s.B, s.G, s.Dk, s.H, s.W).permute(0, 3, 4, 1, 2)
    key = nchw(s.G * 2 * s.Dk, s.W).permute(0, 2, 3, 1)[..., ::2].unflatten(-1, (s.G, s.Dk))
    value = nchw(s.G * s.Dv, s.W + 1).to(memory_format=torch.channels_last)
    value = value.permute(0, 2, 3, 1)[:, :, 1:].unflatten(-1, (s.G, s.Dv))
    offsets = nchw(s.G * N * 2, s.W).permute(0, 2, 3, 1).unflatten(-1, (s.G, N, 2))
    inputs = [t.requires_grad_() for t in (query, key, value, offsets)]
    assert not any(t.is_contiguous() for t in inputs)
    check_against_reference(inputs)


def test_empty_batch() -> None:
    s = sized(Shape(0, 64, 64, 4, 16, 16, 3), Shape(0, 4, 4, 2, 6, 5, 3))
    inputs = make_inputs(s, torch.float32)
    out = dynamic_sample_attention(*inputs, backend="triton")
    assert out.shape == (0, s.H, s.W, s.G, s.Dv) and out.device.type == DEVICE.type
    out.sum().backward()
    assert [t.grad.shape for t in inputs] == [t.shape for t in inputs]


def test_backward_twice_through_the_autotuner_gives_the_same_gradients() -> None:
    """Channel counts no other test uses, so the first backward is the one that
    autotunes (runs every configuration on the real buffers): its atomic map gradients
    must be zeroed between those runs, or they come out several times too large."""
    shape = sized(Shape(2, 48, 64, 1, 48, 40, 3), Shape(1, 4, 5, 1, 7, 5, 3))
    dtype = torch.float32
    inputs = make_inputs(shape, dtype)
    grad_out = torch.randn(inputs[2].shape, device=DEVICE)
    first, second = (forward_backward(inputs, grad_out) for _ in range(2))
    want = reference_results(inputs, grad_out)
    assert_close(first, want, dtype, what="first (autotuning) run")
    assert_close(second, want, dtype, what="second run")
    rtol, atol = TOLERANCE[dtype]
    for name, a, b in zip(NAMES, first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol / 10, atol=atol / 10, msg=name)
