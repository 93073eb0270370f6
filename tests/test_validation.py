"""Bad input raises ValueError/TypeError naming the argument (docs/semantics.md §3)."""

from __future__ import annotations

import math

import pytest
import torch
from utils import BACKENDS, attention_inputs

from ddsm_triton import (
    DDSM,
    ChannelDynamicAffinity,
    SpatialDynamicAffinity,
    dynamic_sample_attention,
)
from ddsm_triton.ops import resolve_backend


def inputs(dtype: torch.dtype = torch.float32, **shape: int) -> dict[str, torch.Tensor]:
    """The op's arguments by name (shape: ``attention_inputs``'s, default (1, 3, 4, 2))."""
    tensors = attention_inputs(**shape, dtype=dtype)
    return dict(zip(("query", "key", "value", "offsets"), tensors, strict=True))


def replaced(**changes):
    args = inputs()
    args.update(changes)
    return args


BAD_OP_INPUTS = [
    pytest.param(
        replaced(key=torch.randn(1, 3, 4, 2, 3)), ValueError, r"key.*\(1, 3, 4, 2, 4\)", id="key-dk"
    ),
    pytest.param(replaced(key=torch.randn(1, 3, 5, 2, 4)), ValueError, "key", id="key-width"),
    pytest.param(replaced(value=torch.randn(1, 3, 4, 1, 5)), ValueError, "value", id="value-heads"),
    pytest.param(
        replaced(offsets=torch.randn(1, 3, 4, 2, 9, 3)),
        ValueError,
        "offsets",
        id="offsets-last-dim",
    ),
    pytest.param(
        replaced(offsets=torch.randn(1, 2, 4, 2, 9, 2)), ValueError, "offsets", id="offsets-height"
    ),
    pytest.param(
        replaced(offsets=torch.randn(1, 3, 4, 2, 4, 2)),
        ValueError,
        r"N.*odd.*got 4",
        id="n-even-square",
    ),
    pytest.param(
        replaced(offsets=torch.randn(1, 3, 4, 2, 8, 2)), ValueError, r"N.*got 8", id="n-not-square"
    ),
    pytest.param(
        replaced(query=torch.randn(1, 3, 4, 2)), ValueError, r"query must be 5-D", id="query-4d"
    ),
    pytest.param(
        replaced(value=torch.randn(1, 3, 4, 2, 5).long()),
        TypeError,
        r"value.*floating.*int64",
        id="value-int",
    ),
    pytest.param(
        replaced(offsets=torch.zeros(1, 3, 4, 2, 9, 2, dtype=torch.int32)),
        TypeError,
        "offsets",
        id="offsets-int",
    ),
    pytest.param(
        replaced(key=torch.randn(1, 3, 4, 2, 4, dtype=torch.float64)),
        TypeError,
        r"key.*dtype",
        id="key-float64",
    ),
    pytest.param(
        replaced(value=torch.randn(1, 3, 4, 2, 5, device="meta")),
        ValueError,
        r"value.*device.*meta",
        id="value-meta-device",
    ),
    pytest.param(
        replaced(query=[1.0]), TypeError, r"query must be a torch.Tensor", id="query-list"
    ),
    pytest.param(inputs(H=0), ValueError, r"query must have positive H", id="zero-height"),
    pytest.param(inputs(Dv=0), ValueError, r"value.*Dv > 0", id="zero-dv"),
    pytest.param(
        replaced(query=torch.randn(1, 3, 4, 2, 4).to_sparse()),
        TypeError,
        r"query must be a dense \(torch.strided\) tensor, got layout torch.sparse_coo",
        id="query-sparse",
    ),
    pytest.param(
        replaced(offsets=torch.randn(1, 3, 4, 2, 9, 2).to_sparse()),
        TypeError,
        r"offsets must be a dense.*sparse_coo",
        id="offsets-sparse",
    ),
]

OP_BACKENDS = BACKENDS


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize(("args", "error", "message"), BAD_OP_INPUTS)
def test_op_rejects_bad_input(args, error, message, backend):
    """Raised by validation, before any backend (the Triton one included) is reached."""
    with pytest.raises(error, match=message):
        dynamic_sample_attention(**args, backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param(
            dict(dilation=0), ValueError, r"dilation must be >= 1, got 0", id="dilation-0"
        ),
        pytest.param(
            dict(dilation=1.5), TypeError, r"dilation must be an int", id="dilation-float"
        ),
        pytest.param(
            dict(dilation=True), TypeError, r"dilation must be an int", id="dilation-bool"
        ),
        pytest.param(
            dict(dilation=10**30),
            ValueError,
            r"dilation must satisfy .* < 2\*\*24.*got dilation=10{30} with k=3, H=3, W=4",
            id="dilation-1e30",
        ),
        pytest.param(
            dict(dilation=2**63 - 1),
            ValueError,
            r"dilation must satisfy.*got dilation=9223372036854775807",
            id="dilation-int64-max",
        ),
        pytest.param(
            dict(dilation=2**24 // 2),  # k = 3 reaches 2**23 cells, plus the map: still fine
            None,
            None,
            id="dilation-largest-ok",
        ),
        pytest.param(
            dict(dilation=2**24 - 4),  # + max(H, W) = 4 reaches 2**24
            ValueError,
            r"dilation must satisfy",
            id="dilation-reaches-2**24",
        ),
        pytest.param(dict(scale=float("nan")), ValueError, r"scale must be finite", id="scale-nan"),
        pytest.param(dict(scale=-math.inf), ValueError, r"scale must be finite", id="scale-inf"),
        pytest.param(
            dict(scale=10**400), ValueError, r"scale must be finite, got 1000", id="scale-huge-int"
        ),
        pytest.param(
            dict(scale=1e39),
            ValueError,
            r"scale must be at most 3.403e\+38 in magnitude for torch.float32 inputs.*got 1e\+39",
            id="scale-beyond-float32",
        ),
        pytest.param(dict(scale="1"), TypeError, r"scale must be a real number", id="scale-str"),
        pytest.param(
            dict(scale=torch.tensor(1.0)),
            TypeError,
            r"scale must be.*got Tensor",
            id="scale-tensor",
        ),
        pytest.param(
            dict(backend="cuda"), ValueError, r"backend must be one of", id="backend-unknown"
        ),
    ],
)
@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_op_rejects_bad_arguments(kwargs, error, message, backend):
    """Checked before any kernel, on every backend (None: accepted and computed)."""
    kwargs = {"backend": backend, **kwargs}
    if error is None:
        out = dynamic_sample_attention(**inputs(), **kwargs)
        assert torch.isfinite(out).all()
        return
    with pytest.raises(error, match=message):
        dynamic_sample_attention(**inputs(), **kwargs)


def test_numpy_scalars_are_accepted_as_scale():
    """numpy.float32 is a real number but not a Python float."""
    import numpy as np

    args = inputs()
    expected = dynamic_sample_attention(**args, scale=0.5, backend="reference")
    out = dynamic_sample_attention(**args, scale=np.float32(0.5), backend="reference")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_float64_inputs_take_a_scale_beyond_float32():
    out = dynamic_sample_attention(**inputs(dtype=torch.float64), scale=1e300, backend="torch")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_huge_scale_stays_finite_and_matches_float64(backend, dtype):
    """scale=1e38 overflows float32 logits; clamped to the finite range
    (docs/semantics.md §1.2, step 6), the softmax still picks the largest logit, as float64 does
    where nothing overflows. Without the clamp the hot logit is inf and the
    softmax NaN. Zero offsets sample whole pixels, so the one hot key pixel gives
    each window one overflowing logit, never a tie of clamped ones."""
    B, H, W, G, D, N = 1, 4, 5, 1, 4, 9
    q = torch.rand(B, H, W, G, D) + 0.5
    k = 0.1 * torch.rand(B, H, W, G, D)  # logits 1e38 * <q, k> < 1e38: finite ...
    k[0, 2, 2] = 4.0  # ... except here: <q, k> >= 8, 1e38 * 8 overflows float32
    v = torch.randn(B, H, W, G, D)
    args = [t.to(dtype) for t in (q, k, v, torch.zeros(B, H, W, G, N, 2))]
    dout = torch.randn(B, H, W, G, D)

    def run(tensors, backend):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        out = dynamic_sample_attention(*leaves, scale=1e38, backend=backend)
        out.backward(dout.to(out.dtype))
        return [out.detach(), *(t.grad for t in leaves)]

    got = run(args, backend)
    expected = run([t.double() for t in args], "reference")
    for g, e in zip(got, expected, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), e, rtol=1e-2, atol=1e-2)
    assert (got[0][0, 1:4, 1:4] == v.to(dtype)[0, 2, 2]).all()  # the hot pixel won


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["auto", *OP_BACKENDS])
def test_op_on_meta_tensors_infers_the_output(backend, dtype):
    """Deferred initialisation (FSDP) runs layers on "meta" tensors for shapes only."""
    args = {name: t.to("meta", dtype) for name, t in inputs().items()}
    out = dynamic_sample_attention(**args, backend=backend)
    assert (out.device.type, out.shape, out.dtype) == ("meta", (1, 3, 4, 2, 5), dtype)


@pytest.mark.parametrize("backend", ["auto", *OP_BACKENDS])
def test_ddsm_on_meta_tensors_infers_the_output_and_gradients(backend):
    with torch.device("meta"):
        layer = DDSM(16, 8, groups=2, backend=backend)
        x_low = torch.randn(2, 16, 8, 8, requires_grad=True)
        y = layer(x_low, torch.randn(2, 8, 4, 4))
        y.sum().backward()
    assert (y.device.type, y.shape) == ("meta", (2, 16, 8, 8))
    assert x_low.grad.shape == x_low.shape
    assert layer.spatial.offset.weight.grad.shape == layer.spatial.offset.weight.shape


def test_empty_batch_is_valid():
    assert dynamic_sample_attention(**inputs(B=0)).shape == (0, 3, 4, 2, 5)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("bogus", torch.device("cpu"))


def test_triton_device_rules_follow_the_interpreter(monkeypatch):
    """Interpreted kernels take CPU tensors only, compiled ones CUDA tensors only, and
    no other device runs them; "meta" infers shapes either way."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.device("cpu")) == "triton"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 is set"):
        resolve_backend("triton", torch.device("cuda"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend("triton", torch.device("cuda")) == "triton"
    for device in ("cpu", "meta"):
        assert resolve_backend("reference", torch.device(device)) == "reference"
    assert resolve_backend("triton", torch.device("meta")) == "triton"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_backend("triton", torch.device("mps"))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        pytest.param(
            lambda: DDSM(16, 8, dim=12),
            ValueError,
            r"dim must be a perfect square.*12",
            id="dim-not-square",
        ),
        pytest.param(
            lambda: DDSM(16, 8, groups=3),
            ValueError,
            r"dim must be divisible by groups",
            id="groups",
        ),
        pytest.param(
            lambda: DDSM(16, 8, kernel_size=2),
            ValueError,
            r"kernel_size\*\*2.*odd.*4",
            id="kernel-even",
        ),
        pytest.param(
            lambda: DDSM(16, 8, channel_kernel_size=4),
            ValueError,
            r"channel_kernel_size",
            id="channel-kernel-even",
        ),
        pytest.param(
            lambda: DDSM(0, 8), ValueError, r"low_channels must be >= 1, got 0", id="zero-channels"
        ),
        pytest.param(
            lambda: DDSM(16, 8, pool_size=0), ValueError, r"pool_size must be >= 1", id="pool-0"
        ),
        pytest.param(
            lambda: DDSM(16, 8, value_down=-1),
            ValueError,
            r"value_down must be >= 1",
            id="value-down-negative",
        ),
        pytest.param(
            lambda: DDSM(16, 8.0), TypeError, r"high_channels must be an int", id="channels-float"
        ),
        pytest.param(
            lambda: DDSM(16, 8, backend="gpu"), ValueError, r"backend must be one of", id="backend"
        ),
        pytest.param(
            lambda: SpatialDynamicAffinity(16, 8, dilation=0),
            ValueError,
            r"dilation",
            id="spatial-dilation",
        ),
        pytest.param(
            lambda: ChannelDynamicAffinity(16, 8, dim=10),
            ValueError,
            r"perfect square",
            id="channel-dim",
        ),
    ],
)
def test_module_rejects_bad_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("x_low", "x_high", "error", "message"),
    [
        pytest.param(
            (1, 15, 8, 8),
            (1, 8, 4, 4),
            ValueError,
            r"x_low must have shape \(B, 16, H, W\)",
            id="low-channels",
        ),
        pytest.param(
            (1, 16, 8, 8),
            (1, 9, 4, 4),
            ValueError,
            r"x_high must have shape \(B, 8, H, W\)",
            id="high-channels",
        ),
        pytest.param(
            (2, 16, 8, 8), (1, 8, 4, 4), ValueError, r"x_high must have the batch size", id="batch"
        ),
        pytest.param((1, 16, 8), (1, 8, 4, 4), ValueError, r"x_low must be 4-D", id="low-3d"),
        pytest.param(
            (1, 16, 0, 8),
            (1, 8, 4, 4),
            ValueError,
            r"x_low must have positive H and W",
            id="low-empty",
        ),
    ],
)
def test_module_rejects_bad_input(x_low, x_high, error, message):
    layer = DDSM(16, 8)
    with pytest.raises(error, match=message):
        layer(torch.randn(x_low), torch.randn(x_high))


def test_module_rejects_integer_and_mixed_inputs():
    layer = DDSM(16, 8)
    with pytest.raises(TypeError, match=r"x_low must have a floating dtype"):
        layer(torch.ones(1, 16, 4, 4, dtype=torch.long), torch.randn(1, 8, 2, 2))
    with pytest.raises(TypeError, match=r"x_high must have the same dtype as x_low"):
        layer(torch.randn(1, 16, 4, 4), torch.randn(1, 8, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x_high must be on the same device as x_low"):
        layer(torch.randn(1, 16, 4, 4), torch.randn(1, 8, 2, 2, device="meta"))
