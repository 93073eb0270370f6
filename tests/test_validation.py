"""Bad input raises ValueError/TypeError naming the argument (SPEC.md section 3)."""

from __future__ import annotations

import pytest
import torch

from ddsm_triton import (
    DDSM,
    ChannelDynamicAffinity,
    SpatialDynamicAffinity,
    dynamic_sample_attention,
)
from ddsm_triton.ops import resolve_backend


def inputs(B=1, H=3, W=4, G=2, Dk=4, Dv=5, N=9, dtype=torch.float32):
    return dict(
        query=torch.randn(B, H, W, G, Dk, dtype=dtype),
        key=torch.randn(B, H, W, G, Dk, dtype=dtype),
        value=torch.randn(B, H, W, G, Dv, dtype=dtype),
        offsets=torch.randn(B, H, W, G, N, 2, dtype=dtype),
    )


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
]


@pytest.mark.parametrize("backend", ["reference", "triton"])
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
        pytest.param(dict(scale=float("nan")), ValueError, r"scale must be finite", id="scale-nan"),
        pytest.param(dict(scale="1"), TypeError, r"scale must be a float", id="scale-str"),
        pytest.param(
            dict(backend="cuda"), ValueError, r"backend must be one of", id="backend-unknown"
        ),
    ],
)
def test_op_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        dynamic_sample_attention(**inputs(), **kwargs)


def test_empty_batch_is_valid():
    assert dynamic_sample_attention(**inputs(B=0)).shape == (0, 3, 4, 2, 5)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"


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
