"""DDSM and its two branches on the reference backend (docs/semantics.md §2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from utils import (
    F64,
    assert_close,
    attention_inputs,
    features,
    literal_channel,
    literal_ddsm,
    literal_spatial,
    randomise_offsets,
    replace_op,
)

import ddsm_triton._backend
import ddsm_triton.channel
import ddsm_triton.ops
import ddsm_triton.spatial
from ddsm_triton import (
    DDSM,
    ChannelDynamicAffinity,
    SpatialDynamicAffinity,
    dynamic_sample_attention,
    sine_position_embedding,
)
from ddsm_triton.layout import heads_to_rows, pixel_rows, rows_to_heads, rows_to_map, to_offsets
from ddsm_triton.ops import dispatch


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(dict(), id="defaults"),
        pytest.param(dict(dim=16, groups=4, kernel_size=5, dilation=2), id="heads4-k5-dil2"),
        pytest.param(dict(dim=9, kernel_size=1, channel_kernel_size=1, pool_size=3), id="k1-dim9"),
        pytest.param(dict(dim=4, pool_size=2, value_down=4, pos_embed=False), id="tiny-no-pe"),
    ],
)
def test_shape_and_every_parameter_gets_a_gradient(config):
    layer = DDSM(16, 12, **config)
    randomise_offsets(layer)
    x_low, x_high = features()
    x_low.requires_grad_()
    y = layer(x_low, x_high)
    assert y.shape == x_low.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    # With one sample the softmax is constant 1, so the affinity cannot matter: the
    # query conv gets no gradient, nor does the spatial key conv (the channel key
    # conv still feeds the channel offsets).
    unused = set()
    if config.get("kernel_size") == 1:
        unused |= {"spatial.query", "spatial.key"}
    if config.get("channel_kernel_size") == 1:
        unused |= {"channel.query"}
    for name, p in layer.named_parameters():
        if name.rsplit(".", 1)[0] in unused:
            assert p.grad.abs().max() == 0, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x_low.grad.abs().sum() > 0


def test_fresh_layer_samples_the_regular_window(monkeypatch):
    layer = DDSM(16, 12, groups=2)
    for conv in (layer.spatial.offset, layer.channel.offset):
        assert conv.weight.abs().max() == 0 and conv.bias.abs().max() == 0
    seen = []

    def spy(query, key, value, offsets, **kwargs):
        seen.append(offsets)
        return dispatch(query, key, value, offsets, **kwargs)

    replace_op(monkeypatch, spy)
    layer(*features())
    spatial, channel = seen
    assert spatial.shape == (2, 10, 9, 2, 9, 2) and spatial.abs().max() == 0
    assert channel.shape == (2, 4, 4, 1, 9, 2) and channel.abs().max() == 0


def test_spatial_branch_composition_with_one_sample():
    """k = 1 with zero offsets reads the cell itself, so the branch reduces to
    proj(value(up(x_high + e_h))): checks embeddings, resizing and head layout."""
    layer = SpatialDynamicAffinity(16, 12, dim=8, kernel_size=1, groups=2).double()
    x_low, x_high = features(dtype=F64)
    e_h = sine_position_embedding(12, 5, 4, dtype=F64, device=x_high.device)
    up = F.interpolate(x_high + e_h, size=(10, 9), mode="bilinear", align_corners=False)
    expected = layer.proj(layer.value(up))
    assert_close(layer(x_low, x_high), expected)


def test_channel_branch_composition_with_one_sample():
    """Nc = 1 with zero offsets: each channel attends only to itself, so the branch
    reduces to up(proj(value(avg_pool(x_high, value_down))))."""
    layer = ChannelDynamicAffinity(16, 12, dim=16, pool_size=3, channel_kernel_size=1).double()
    x_low, x_high = features(h=6, w=4, dtype=F64)
    pooled = F.avg_pool2d(x_high, 2)
    expected = F.interpolate(
        layer.proj(layer.value(pooled)), size=(10, 9), mode="bilinear", align_corners=False
    )
    assert_close(layer(x_low, x_high), expected)


def test_ddsm_is_the_residual_sum_of_its_branches():
    layer = DDSM(16, 12, groups=2).double()
    randomise_offsets(layer)
    x_low, x_high = features(dtype=F64)
    expected = x_low + layer.spatial(x_low, x_high) + layer.channel(x_low, x_high)
    torch.testing.assert_close(layer(x_low, x_high), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("config", "high_size"),
    [
        pytest.param(dict(), (5, 4), id="defaults"),
        pytest.param(dict(dim=16, groups=4, kernel_size=5, dilation=2), (5, 4), id="k5-dil2"),
        pytest.param(dict(value_down=4), (1, 3), id="high-smaller-than-value-down"),
    ],
)
def test_each_branch_equals_its_literal_composition(config, high_size):
    """Each branch, called on its own, equals docs/semantics.md §2 written out with the
    reference op (utils.literal_*), and contributes to the output."""
    layer = randomise_offsets(DDSM(16, 12, **config)).double()
    x_low, x_high = features(h=high_size[0], w=high_size[1], dtype=F64)
    for branch, literal in ((layer.spatial, literal_spatial), (layer.channel, literal_channel)):
        got, want = branch(x_low, x_high), literal(branch, x_low, x_high)
        assert_close(got, want, msg=type(branch).__name__)
        assert want.abs().mean() > 0.01 * x_low.abs().mean(), type(branch).__name__
    assert_close(layer(x_low, x_high), literal_ddsm(layer, x_low, x_high), msg="DDSM")


def test_empty_batch_returns_empty():
    layer = DDSM(16, 12)
    y = layer(*features(B=0))
    assert y.shape == (0, 16, 10, 9)


@pytest.mark.parametrize("target_backend", ["reference", "triton", "auto"])
def test_state_dict_round_trip_under_any_backend(target_backend):
    source = DDSM(16, 12, groups=2)
    randomise_offsets(source)
    target = DDSM(16, 12, groups=2, backend=target_backend)
    target.load_state_dict(source.state_dict())
    assert source.state_dict().keys() == target.state_dict().keys()
    for name, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[name]), name
    # One backend on both sides for a bitwise comparison ("auto" is "torch" on CPU,
    # equal to the reference only up to float32 rounding).
    target.backend = source.backend = "reference"
    x_low, x_high = features()
    torch.testing.assert_close(target(x_low, x_high), source(x_low, x_high), rtol=0, atol=0)


def test_backend_switch_reaches_both_branches():
    layer = DDSM(16, 12)
    layer.backend = "triton"
    assert layer.spatial.backend == layer.channel.backend == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.backend = "cuda"


@pytest.mark.parametrize("branch", [SpatialDynamicAffinity, ChannelDynamicAffinity])
def test_a_branch_checks_its_backend_name_when_it_is_set(branch):
    with pytest.raises(ValueError, match="backend must be one of"):
        branch(16, 12, backend="gpu")
    layer = branch(16, 12)
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.backend = "gpu"
    assert layer.backend == "auto"


def test_a_call_does_not_check_the_backend_name_again(monkeypatch):
    """The name was checked when it was set; a forward call only resolves it."""
    layer = DDSM(16, 12)

    def fail(backend):
        raise AssertionError(f"backend {backend!r} checked again during a call")

    monkeypatch.setattr(ddsm_triton._backend, "check_backend", fail)
    monkeypatch.setattr(ddsm_triton.ops, "check_backend", fail)
    y = layer(*features())
    assert y.shape == (2, 16, 10, 9)
    with pytest.raises(AssertionError, match="checked again"):  # the op checks its own
        dynamic_sample_attention(*attention_inputs(), backend="torch")


def test_ddsm_checks_its_inputs_once(monkeypatch):
    """DDSM checks (x_low, x_high) once for both branches; a branch on its own checks."""
    calls = []
    check = ddsm_triton.spatial.check_feature_maps

    def counting(*args, **kwargs):
        calls.append(1)
        return check(*args, **kwargs)

    monkeypatch.setattr(ddsm_triton.spatial, "check_feature_maps", counting)
    monkeypatch.setattr(ddsm_triton.channel, "check_feature_maps", counting)
    layer = DDSM(16, 12)
    x_low, x_high = features()
    layer(x_low, x_high)
    assert len(calls) == 1
    layer.channel(x_low, x_high)
    layer.spatial(x_low, x_high)
    assert len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_runs_and_trains(dtype):
    layer = DDSM(16, 12, groups=2)
    randomise_offsets(layer)
    x_low, x_high = features()
    reference = layer(x_low, x_high)
    layer = layer.to(dtype)
    y = layer(x_low.to(dtype), x_high.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), reference, rtol=0.1, atol=0.1)
    y.float().square().mean().backward()
    for name, p in layer.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_position_embedding_layout():
    e = sine_position_embedding(10, 4, 6, dtype=torch.float32, device=torch.device("cpu"))
    assert e.shape == (1, 10, 4, 6)
    assert e[:, 8:].abs().max() == 0  # channels beyond 4 * (10 // 4) are zero
    rows, cols = e[0, :4], e[0, 4:8]
    assert torch.equal(rows, rows[:, :, :1].expand_as(rows))  # varies along H only
    assert torch.equal(cols, cols[:, :1, :].expand_as(cols))  # varies along W only
    # First row frequency is 1: sin/cos of (i + 1) / H * 2 pi.
    angle = (torch.arange(4) + 1) / 4 * 2 * math.pi
    torch.testing.assert_close(rows[0, :, 0], angle.sin())
    torch.testing.assert_close(rows[1, :, 0], angle.cos())


def test_layout_helpers_are_views_of_channels_last_maps():
    x = torch.randn(2, 12, 5, 7).to(memory_format=torch.channels_last)
    rows = pixel_rows(x)
    assert rows.shape == (2, 35, 12) and rows.is_contiguous()
    heads = rows_to_heads(rows, (5, 7), groups=3)
    assert heads.shape == (2, 5, 7, 3, 4) and heads.is_contiguous()
    assert heads.data_ptr() == x.data_ptr()
    assert torch.equal(rows_to_map(heads_to_rows(heads), (5, 7)), x)
    assert torch.equal(heads[1, 2, 3, 2], x[1, 8:12, 2, 3])
    offsets = to_offsets(torch.randn(2, 3 * 9 * 2, 5, 7), groups=3, num_samples=9)
    assert offsets.shape == (2, 5, 7, 3, 9, 2)
