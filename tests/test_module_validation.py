"""Module misuse gets a clear error naming the argument, or works (docs/semantics.md §3).

Inputs of another dtype than the parameters (outside autocast), on another device,
sparse inputs and a non-bool ``pos_embed``: each used to fail deep inside a
convolution, or to be accepted silently. Autocast and meta tensors must keep working.
"""

from __future__ import annotations

import pytest
import torch
from utils import features, replace_op

from ddsm_triton import DDSM, ChannelDynamicAffinity, SpatialDynamicAffinity

MODULES = [
    pytest.param(DDSM, id="ddsm"),
    pytest.param(SpatialDynamicAffinity, id="spatial"),
    pytest.param(ChannelDynamicAffinity, id="channel"),
]


def _inputs(dtype: torch.dtype = torch.float32, device: str = "cpu"):
    return features(2, 16, 8, 6, 5, 3, 3, dtype=dtype, device=device)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(
    ("module_dtype", "input_dtype"),
    [
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
    ids=["f64-into-f32", "f32-into-f64", "f32-into-bf16"],
)
def test_inputs_of_another_dtype_than_the_module(module, module_dtype, input_dtype):
    layer = module(16, 8).to(module_dtype)
    expected = rf"x_low must have the module's dtype \({module_dtype}\), got {input_dtype}"
    with pytest.raises(TypeError, match=expected):
        layer(*_inputs(input_dtype))


@pytest.mark.parametrize("module", MODULES)
def test_inputs_on_another_device_than_the_module(module):
    layer = module(16, 8).to("meta")
    with pytest.raises(ValueError, match=r"x_low must be on the module's device \(meta\), got cpu"):
        layer(*_inputs())


@pytest.mark.parametrize("module", MODULES)
def test_sparse_inputs(module):
    layer = module(16, 8)
    x_low, x_high = _inputs()
    with pytest.raises(
        TypeError, match=r"x_low must be a dense \(torch.strided\) tensor, got layout torch.sparse"
    ):
        layer(x_low.to_sparse(), x_high)
    with pytest.raises(
        TypeError, match=r"x_high must be a dense \(torch.strided\) tensor, got layout torch.sparse"
    ):
        layer(x_low, x_high.to_sparse())


@pytest.mark.parametrize("value", ["no", None, 1, 0.0])
@pytest.mark.parametrize("module", [DDSM, SpatialDynamicAffinity], ids=["ddsm", "spatial"])
def test_pos_embed_must_be_a_bool(module, value):
    with pytest.raises(TypeError, match=rf"pos_embed must be a bool, got {type(value).__name__}"):
        module(16, 8, pos_embed=value)


def test_default_dim_that_is_not_square_says_where_it_came_from():
    with pytest.raises(ValueError, match=r"got 12 \(dim defaults to low_channels; pass a square"):
        DDSM(12, 8)
    with pytest.raises(ValueError, match=r"perfect square.*got 12$"):
        DDSM(16, 8, dim=12)


@pytest.mark.parametrize("module", MODULES)
def test_autocast_accepts_inputs_of_other_dtypes(module):
    """Under autocast the convolutions cast whatever comes in: a float32 module takes
    bfloat16 inputs, and x_low and x_high may differ."""
    layer = module(16, 8)
    x_low, x_high = _inputs()
    for a, b in ((x_low.bfloat16(), x_high.bfloat16()), (x_low, x_high.bfloat16())):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(a, b)
        assert y.shape == x_low.shape and torch.isfinite(y).all()
    with pytest.raises(TypeError, match=r"x_high must have the same dtype as x_low"):
        layer(x_low, x_high.bfloat16())  # autocast off: a mistake again


def test_modules_run_on_meta_tensors(monkeypatch):
    """Shape inference for deferred initialisation: the module's own code runs on meta
    (the op is stubbed here; meta support of the op itself is tested with the op)."""

    def op_stub(query, key, value, offsets, **kwargs):
        assert all(t.is_meta for t in (query, key, value, offsets))
        return torch.empty_like(value)

    replace_op(monkeypatch, op_stub)
    layer = DDSM(16, 8).to("meta")
    y = layer(*_inputs(device="meta"))
    assert y.is_meta and y.shape == (2, 16, 6, 5)


@pytest.mark.parametrize("dilation", [10**30, 2**63 - 1, 2**24])
def test_dilation_overflow_is_rejected_at_construction(dilation):
    with pytest.raises(ValueError, match=r"dilation must satisfy .*got dilation="):
        DDSM(16, 8, dilation=dilation)
