"""The Triton dynamic sample attention (run by the interpreter on CPU) against the
PyTorch reference: forward, all four gradients, edge cases, determinism, memory and
the torch.library registration.

Shapes are tiny because the interpreter pays a large fixed cost per program and per
operation; the interpreter configuration uses 128-cell tiles, so a case needs more
than 128 cells (or more than 64 key / 256 value channels) to span several tiles.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ddsm_triton.kernels as kernels
from ddsm_triton.kernels.dynamic_sample_attention import new_output
from ddsm_triton.memory import saved_bytes
from ddsm_triton.reference import dynamic_sample_attention as reference_op

pytestmark = pytest.mark.interpreter


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel output buffer starts as NaN, so an element a kernel fails to write
    shows up as a non-finite value or a mismatch against the reference."""
    monkeypatch.setenv("DDSM_POISON_OUTPUTS", "1")


# (relative tolerance, absolute tolerance as a fraction of the largest reference
# magnitude). float16/bfloat16 inputs are computed in float32 by both sides, so they
# differ by about one rounding of the output dtype; float32 by summation order.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
NAMES = ("out", "dquery", "dkey", "dvalue", "doffsets")


def make_inputs(
    B: int,
    H: int,
    W: int,
    G: int,
    Dk: int,
    Dv: int,
    k: int,
    *,
    dtype: torch.dtype = torch.float64,
    spread: float = 1.5,
) -> list[torch.Tensor]:
    """Random query, key, value and offsets; offsets are N(0, spread) plus a fixed 0.37
    so that positions sit away from integers (where offset gradients are one-sided)."""
    shapes = [(B, H, W, G, Dk), (B, H, W, G, Dk), (B, H, W, G, Dv)]
    tensors = [torch.randn(s, dtype=torch.float64) for s in shapes]
    tensors.append(torch.randn(B, H, W, G, k * k, 2, dtype=torch.float64) * spread + 0.37)
    return [t.to(dtype).requires_grad_() for t in tensors]


def run(op, inputs, grad_out, dilation: int, scale: float | None) -> list[torch.Tensor]:
    """Output and the gradients of <out, grad_out> for all four inputs."""
    scale = inputs[0].shape[-1] ** -0.5 if scale is None else scale
    if op is reference_op:
        out = reference_op(*inputs, dilation=dilation, scale=scale)
    else:
        out = kernels.dynamic_sample_attention(*inputs, dilation=dilation, scale=scale)
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=False)
    return [out, *grads]


def assert_matches_reference(
    inputs: list[torch.Tensor], dilation: int = 1, scale: float | None = None
) -> list[torch.Tensor]:
    """Run both implementations with the same upstream gradient and compare all five
    results; returns the Triton ones."""
    dtype = inputs[0].dtype
    B, H, W, G, _ = inputs[0].shape
    grad_out = torch.randn(B, H, W, G, inputs[2].shape[-1], dtype=torch.float64).to(dtype)
    got = run(kernels, inputs, grad_out, dilation, scale)
    want = run(reference_op, inputs, grad_out, dilation, scale)
    rtol, atol = TOLERANCE[dtype]
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert torch.isfinite(g).all(), f"{name}: non-finite (unwritten?) elements"
        scale_ = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        torch.testing.assert_close(
            g.double(), w.double(), rtol=rtol, atol=atol * scale_, msg=lambda m, n=name: f"{n}: {m}"
        )
    return got


# (B, H, W, G, Dk, Dv, k, dilation)
SHAPES = [
    pytest.param((1, 5, 6, 2, 8, 12, 3, 1), id="k3-g2"),
    pytest.param((2, 4, 3, 1, 16, 37, 1, 1), id="n1-dv37"),
    pytest.param((1, 6, 5, 1, 8, 8, 5, 2), id="k5-dil2"),
    pytest.param((1, 3, 4, 4, 20, 6, 3, 1), id="g4-dk20-dv6"),
    pytest.param((1, 1, 7, 1, 5, 9, 3, 1), id="h1"),
    pytest.param((2, 6, 1, 1, 5, 9, 3, 2), id="w1"),
    pytest.param((1, 3, 3, 1, 70, 5, 3, 1), id="dk70-two-key-chunks"),
    pytest.param((2, 9, 8, 1, 4, 3, 3, 1), id="144-cells-two-tiles"),
    pytest.param((1, 3, 3, 1, 6, 1030, 3, 1), id="dv1030-wide-values"),
    pytest.param((1, 1, 2, 1, 3, 600, 1, 1), id="dv600-wide-values-n1"),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_reference(shape):
    B, H, W, G, Dk, Dv, k, dilation = shape
    assert_matches_reference(make_inputs(B, H, W, G, Dk, Dv, k), dilation)


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        pytest.param(torch.float32, (1, 5, 6, 2, 16, 12, 3, 1), id="float32-k3-g2"),
        pytest.param(torch.float32, (1, 4, 4, 1, 8, 40, 5, 2), id="float32-k5-dil2-dv40"),
        pytest.param(torch.float16, (1, 5, 6, 2, 16, 12, 3, 1), id="float16-k3-g2"),
        pytest.param(torch.bfloat16, (1, 5, 6, 2, 16, 12, 3, 1), id="bfloat16-k3-g2"),
        pytest.param(torch.float16, (2, 4, 3, 1, 16, 24, 1, 1), id="float16-n1"),
        pytest.param(torch.bfloat16, (2, 4, 3, 1, 16, 24, 1, 1), id="bfloat16-n1"),
        pytest.param(torch.bfloat16, (1, 2, 3, 1, 8, 520, 3, 1), id="bfloat16-wide-values"),
    ],
)
def test_low_precision_matches_reference(dtype, shape):
    B, H, W, G, Dk, Dv, k, dilation = shape
    got = assert_matches_reference(make_inputs(B, H, W, G, Dk, Dv, k, dtype=dtype), dilation)
    if k == 1:
        # One sample: softmax == 1 whatever the logit, so query and key get exactly zero
        # gradient. Delta = <dO, out> taken from a rounded half-precision out would not
        # cancel dA (dkey entries of 1.31 in bfloat16).
        _, dquery, dkey, *_ = got
        assert dquery.abs().max() == 0 and dkey.abs().max() == 0


def test_explicit_scale_and_large_logits():
    """A large scale makes the softmax peaky: the online max must keep it stable."""
    inputs = make_inputs(1, 4, 5, 1, 8, 6, 3)
    assert_matches_reference(inputs, scale=25.0)


def test_gradcheck_float64():
    inputs = make_inputs(1, 2, 2, 1, 3, 2, 3, spread=0.4)
    fn = lambda *xs: kernels.dynamic_sample_attention(*xs, dilation=1, scale=0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_all_samples_out_of_bounds_give_uniform_attention_and_zero_output():
    inputs = make_inputs(1, 4, 4, 2, 6, 5, 3)
    with torch.no_grad():
        inputs[3][0, 1, 2] = 100.0  # every sample of cell (1, 2) far below the map
        inputs[3][0, 3, 0, 1, :, 1] = -50.0  # and of cell (3, 0), head 1, left of it
    out, dq, _, _, doff = assert_matches_reference(inputs)
    assert torch.equal(out[0, 1, 2], torch.zeros_like(out[0, 1, 2]))
    assert torch.equal(out[0, 3, 0, 1], torch.zeros_like(out[0, 3, 0, 1]))
    assert torch.equal(doff[0, 1, 2], torch.zeros_like(doff[0, 1, 2]))
    assert torch.equal(dq[0, 1, 2], torch.zeros_like(dq[0, 1, 2]))


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("-inf"), id="minus-inf"),
        pytest.param(1e30, id="1e30"),
        pytest.param(-1e30, id="minus-1e30"),
    ],
)
def test_non_finite_and_huge_offsets_sample_zero(bad):
    inputs = make_inputs(1, 4, 5, 1, 6, 7, 3)
    with torch.no_grad():
        inputs[3][0, 2, 3, 0, 4, 0] = bad  # centre sample of one cell, dy
        inputs[3][0, 0, 0, 0, :, 1] = bad  # every sample of another cell, dx
    out, *_, doff = assert_matches_reference(inputs)
    assert doff[0, 2, 3, 0, 4].abs().max() == 0
    assert doff[0, 0, 0, 0].abs().max() == 0
    assert out[0, 0, 0].abs().max() == 0


def test_positions_on_integers_and_edges_use_floor_corners():
    """Integer offsets put samples exactly on cells and on the -1 / H-1 edges, where the
    offset gradient is one-sided (floor corners), as in the reference."""
    inputs = make_inputs(1, 4, 4, 1, 5, 4, 3)
    with torch.no_grad():
        inputs[3].copy_(torch.randint(-3, 4, inputs[3].shape, dtype=torch.float64))
    assert_matches_reference(inputs)


def test_empty_batch():
    inputs = make_inputs(0, 4, 4, 2, 6, 5, 3)
    out = kernels.dynamic_sample_attention(*inputs, dilation=1, scale=0.5)
    assert out.shape == (0, 4, 4, 2, 5)
    out.sum().backward()
    assert [t.grad.shape for t in inputs] == [t.shape for t in inputs]


def _channels_first(B, C, H, W):
    """A channels-first (B, C, H, W) activation, as a 1x1 convolution returns it."""
    return torch.randn(B, C, H, W, dtype=torch.float64)


def test_non_contiguous_inputs():
    """A permuted NCHW convolution output, a strided channel slice, a cropped
    channels_last activation and permuted offsets: none contiguous as (B, H, W, G, D)."""
    B, H, W, G, Dk, Dv, k = 1, 5, 4, 2, 6, 3, 3
    N = k * k
    query = _channels_first(B, G * Dk, H, W).view(B, G, Dk, H, W).permute(0, 3, 4, 1, 2)
    key = _channels_first(B, G * 2 * Dk, H, W).permute(0, 2, 3, 1)[..., ::2]
    key = key.unflatten(-1, (G, Dk))
    value = _channels_first(B, G * Dv, H, W + 1).to(memory_format=torch.channels_last)
    value = value.permute(0, 2, 3, 1)[:, :, 1:].unflatten(-1, (G, Dv))
    offsets = _channels_first(B, G * N * 2, H, W).permute(0, 2, 3, 1).unflatten(-1, (G, N, 2))
    inputs = [t.requires_grad_() for t in (query, key, value, offsets)]
    assert not any(t.is_contiguous() for t in inputs)
    assert_matches_reference(inputs)


def test_poisoned_outputs_are_nan_until_written():
    """The poisoning this module relies on is real."""
    buffer = new_output((3,), torch.float32, torch.device("cpu"))
    assert torch.isnan(buffer).all()


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 5),
    W=st.integers(1, 5),
    G=st.integers(1, 2),
    Dk=st.integers(1, 12),
    Dv=st.integers(1, 12),
    k=st.sampled_from([1, 3, 5]),
    dilation=st.integers(1, 3),
    spread=st.floats(0.0, 6.0),
)
def test_property_random_shapes_match_reference(B, H, W, G, Dk, Dv, k, dilation, spread):
    torch.manual_seed(B * 1000 + H * 100 + W * 10 + G + Dk + Dv + k)
    assert_matches_reference(make_inputs(B, H, W, G, Dk, Dv, k, spread=spread), dilation)


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def test_deterministic_backward_is_bitwise_reproducible(deterministic):
    """Offsets squeezed towards one point make many samples hit the same map rows,
    so an order-dependent reduction would differ between runs on a GPU."""
    inputs = make_inputs(1, 6, 5, 2, 6, 20, 3, dtype=torch.float32, spread=0.3)
    with torch.no_grad():
        inputs[3].mul_(0.1)
    first = assert_matches_reference(inputs)
    grad_out = torch.randn_like(first[0])
    runs = [run(kernels, inputs, grad_out, 1, None) for _ in range(2)]
    for name, a, b in zip(NAMES, *runs, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("Dv", [pytest.param(7, id="narrow"), pytest.param(530, id="wide-dv")])
def test_deterministic_and_atomic_paths_agree(deterministic, Dv):
    inputs = make_inputs(1, 4, 5, 1, 6, Dv, 3)
    grad_out = torch.randn(1, 4, 5, 1, Dv, dtype=torch.float64)
    det = run(kernels, inputs, grad_out, 1, None)
    again = run(kernels, inputs, grad_out, 1, None)
    assert all(torch.equal(a, b) for a, b in zip(det, again, strict=True))
    torch.use_deterministic_algorithms(False)
    atomic = run(kernels, inputs, grad_out, 1, None)
    for name, a, b in zip(NAMES, det, atomic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_saved_memory_is_a_fifteenth_of_the_reference():
    inputs = make_inputs(1, 16, 16, 1, 64, 64, 3, dtype=torch.float32)
    # Bytes saved beyond the op's inputs, each storage once (the benchmark's counter).
    ours = saved_bytes(
        lambda: kernels.dynamic_sample_attention(*inputs, 1, 0.125), exclude=inputs
    ).activations
    theirs = saved_bytes(
        lambda: reference_op(*inputs, dilation=1, scale=0.125), exclude=inputs
    ).activations
    # The log-sum-exp (16*16 float32) only: nothing of size N x D, and not even out,
    # since the backward rebuilds Delta = <dO, out> from the samples.
    assert ours == 16 * 16 * 4
    assert ours * 15 <= theirs, (ours, theirs)


def test_opcheck_forward():
    inputs = make_inputs(1, 2, 2, 1, 3, 2, 1)
    torch.library.opcheck(torch.ops.ddsm.dsa_forward.default, (*inputs, 1, 0.5))


def test_opcheck_backward():
    q, k, v, off = (t.detach() for t in make_inputs(1, 2, 2, 1, 3, 2, 1))
    out, lse = torch.ops.ddsm.dsa_forward(q, k, v, off, 1, 0.5)
    args = (torch.randn_like(out), q, k, v, off, lse, 1, 0.5, False)
    torch.library.opcheck(torch.ops.ddsm.dsa_backward.default, args)


def test_float64_scale_beyond_float32_range_matches_reference():
    """Triton passes Python floats as float32: a scale of 1e300 must reach float64
    kernels exactly (it would be inf in float32)."""
    inputs = make_inputs(1, 3, 4, 1, 5, 6, 3)
    assert_matches_reference(inputs, scale=1e300)


def _clamped_oracle(inputs, scale: float) -> torch.Tensor:
    """Independent float64 output with logits clamped to the float64 range."""
    from ddsm_triton.reference.dynamic_sample_attention import bilinear_sample, sample_positions

    query, key, value, offsets = (t.detach().double() for t in inputs)
    y, x = sample_positions(offsets, 1)
    keys, values = bilinear_sample(key, y, x), bilinear_sample(value, y, x)
    big = torch.finfo(torch.float64).max
    logits = (scale * (query.unsqueeze(-2) * keys).sum(-1)).clamp(-big, big)
    return (torch.softmax(logits, -1).unsqueeze(-1) * values).sum(-2)


def test_overflowing_scale_gives_a_valid_softmax():
    """scale * <q, K_n> beyond the largest float64 is clamped to it before the softmax,
    so the output is the softmax over the clamped logits, not NaN."""
    inputs = make_inputs(1, 3, 4, 1, 5, 6, 3)
    scale = 1e308  # |<q, K_n>| > 1.8 overflows: several samples tie at the clamp
    out = kernels.dynamic_sample_attention(*inputs, 1, scale)
    want = _clamped_oracle(inputs, scale)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def _recording(run, name: str, names: list[str]):
    def recorded(*args, **kwargs):
        names.append(name)
        return run(*args, **kwargs)

    return recorded


def _recorded_launches(inputs, deterministic: bool) -> list[str]:
    """Names of the kernels one forward and backward launch, in order."""
    names: list[str] = []
    variants = {v.jit_function.__name__: v.kernel for v in kernels.KERNEL_VARIANTS}
    for name, kernel in variants.items():
        kernel.run = _recording(type(kernel).run.__get__(kernel), name, names)
    try:
        torch.use_deterministic_algorithms(deterministic)
        out = kernels.dynamic_sample_attention(*inputs, 1, 0.5)
        torch.autograd.grad(out, inputs, torch.randn_like(out))
    finally:
        torch.use_deterministic_algorithms(False)
        for kernel in variants.values():
            vars(kernel).pop("run", None)
    return names


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("Dv", [pytest.param(6, id="narrow"), pytest.param(530, id="wide")])
def test_launch_plan_is_what_the_op_launches(Dv, deterministic):
    """The plan the first-call report counts is the op's: same kernels, same order."""
    inputs = make_inputs(1, 2, 3, 1, 5, Dv, 3)
    launched = _recorded_launches(inputs, deterministic)
    by_name = {v.name: v.jit_function.__name__ for v in kernels.KERNEL_VARIANTS}
    plan = kernels.launch_plan(6, 5, Dv, torch.float64, deterministic)
    assert launched == [by_name[launch.variant] for launch in plan]
