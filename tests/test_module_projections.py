"""The modules' fast projections are SPEC section 2, exactly.

The modules compute value = up(Conv1x1(x_high')) and the x_high' half of the key at
x_high's resolution (a 1x1 convolution commutes with bilinear resizing), and write
every projection as a batched matmul in the op's layout. Here SPEC section 2 is
written out as it states it, with the convolutions at full resolution, and the
modules must match it in float64 to 1e-10: outputs, every parameter gradient and
both input gradients, also after a state_dict round trip. FLOPs are counted on fake
tensors, so the full-size count costs no compute.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomise_offsets
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from ddsm_triton import DDSM, sine_position_embedding
from ddsm_triton.channel import ChannelDynamicAffinity
from ddsm_triton.layout import to_offsets
from ddsm_triton.reference import dynamic_sample_attention
from ddsm_triton.spatial import SpatialDynamicAffinity

F64 = torch.float64
TOL = 1e-10


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _embedded(x: torch.Tensor) -> torch.Tensor:
    _, C, H, W = x.shape
    return x + sine_position_embedding(C, H, W, dtype=x.dtype, device=x.device)


def spec_spatial(m: SpatialDynamicAffinity, x_low: torch.Tensor, x_high: torch.Tensor):
    """SPEC section 2, spatial branch, literally: every conv at (H, W)."""
    size = x_low.shape[-2:]
    xl = _embedded(x_low) if m.pos_embed else x_low
    xh = _up(_embedded(x_high) if m.pos_embed else x_high, size)
    both = torch.cat([xl, xh], dim=1)

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, G*D, H, W) -> (B, H, W, G, D)
        return t.permute(0, 2, 3, 1).unflatten(-1, (m.groups, -1))

    out = dynamic_sample_attention(
        heads(m.query(xl)),
        heads(m.key(both)),
        heads(m.value(xh)),
        to_offsets(m.offset(both), m.groups, m.num_samples),
        dilation=m.dilation,
    )
    return m.proj(out.flatten(-2).permute(0, 3, 1, 2))


def spec_channel(m: ChannelDynamicAffinity, x_low: torch.Tensor, x_high: torch.Tensor):
    """SPEC section 2, channel branch, literally, with the modules' convolutions."""
    B, s, a = x_low.shape[0], m.side, m.pool_size
    pooled_low = F.adaptive_avg_pool2d(x_low, a)
    pooled = torch.cat([pooled_low, F.adaptive_avg_pool2d(x_high, a)], dim=1)
    query, key = m.query(pooled_low).flatten(2), m.key(pooled).flatten(2)
    offsets = m.offset(key.transpose(1, 2).reshape(B, a * a, s, s))
    h, w = x_high.shape[-2:]
    down = F.adaptive_avg_pool2d(x_high, (max(1, h // m.value_down), max(1, w // m.value_down)))
    value = m.value(down)
    out = dynamic_sample_attention(
        query.reshape(B, s, s, 1, a * a),
        key.reshape(B, s, s, 1, a * a),
        value.reshape(B, s, s, 1, -1),
        to_offsets(offsets, 1, m.num_samples),
    )
    return _up(m.proj(out.reshape(value.shape)), x_low.shape[-2:])


def spec_ddsm(m: DDSM, x_low: torch.Tensor, x_high: torch.Tensor) -> torch.Tensor:
    return x_low + spec_spatial(m.spatial, x_low, x_high) + spec_channel(m.channel, x_low, x_high)


def _outputs_and_grads(layer, forward, x_low, x_high, weight):
    """Output, input gradients and every parameter gradient of sum(forward(...) * weight)."""
    layer.zero_grad(set_to_none=True)
    x_low, x_high = (x.detach().clone().requires_grad_() for x in (x_low, x_high))
    y = forward(x_low, x_high)
    (y * weight).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return y.detach(), x_low.grad, x_high.grad, grads


def _assert_same(got, expected) -> None:
    (y, gl, gh, gp), (y0, gl0, gh0, gp0) = got, expected
    torch.testing.assert_close(y, y0, rtol=TOL, atol=TOL, msg="output")
    torch.testing.assert_close(gl, gl0, rtol=TOL, atol=TOL, msg="x_low gradient")
    torch.testing.assert_close(gh, gh0, rtol=TOL, atol=TOL, msg="x_high gradient")
    assert gp.keys() == gp0.keys()
    for name, grad in gp0.items():
        assert grad is not None and grad.abs().max() > 0, f"{name}: no gradient to compare"
        torch.testing.assert_close(gp[name], grad, rtol=TOL, atol=TOL, msg=name)


CONFIGS = [
    # (layer config, x_high (h, w)); x_low is (10, 9).
    pytest.param(dict(dim=16, groups=2, pool_size=3), (5, 4), id="g2-downsampled-high"),
    pytest.param(dict(dim=9, kernel_size=5, dilation=2, pos_embed=False), (3, 7), id="k5-no-pe"),
    pytest.param(dict(dim=16, groups=4, value_down=1), (10, 9), id="same-size-high"),
    pytest.param(dict(dim=16, pool_size=2), (13, 11), id="high-larger-than-low"),
]


@pytest.mark.parametrize(("config", "high_size"), CONFIGS)
def test_ddsm_equals_the_spec_composition_in_float64(config, high_size):
    layer = randomise_offsets(DDSM(16, 12, **config)).to(F64)
    x_low = torch.randn(2, 16, 10, 9, dtype=F64)
    x_high = torch.randn(2, 12, *high_size, dtype=F64)
    weight = torch.randn(2, 16, 10, 9, dtype=F64)
    got = _outputs_and_grads(layer, layer, x_low, x_high, weight)
    spec = _outputs_and_grads(layer, lambda a, b: spec_ddsm(layer, a, b), x_low, x_high, weight)
    _assert_same(got, spec)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_saved_state_dict_loads_and_gives_the_spec_outputs_and_gradients(tmp_path, memory_format):
    """A state_dict saved by one layer (parameter names and shapes of SPEC section 2,
    stored to disk) loads into a fresh layer, which then computes SPEC's function."""
    source = randomise_offsets(DDSM(16, 12, dim=16, groups=2, pool_size=3)).to(F64)
    torch.save(source.state_dict(), tmp_path / "ddsm.pt")
    target = DDSM(16, 12, dim=16, groups=2, pool_size=3).to(F64)
    target.load_state_dict(torch.load(tmp_path / "ddsm.pt"))
    shapes = {name: tuple(p.shape) for name, p in target.state_dict().items()}
    assert shapes["spatial.key.weight"] == (16, 28, 1, 1)  # one conv over cat[x_low, x_high]
    assert shapes["spatial.value.weight"] == (16, 12, 1, 1)

    x_low = torch.randn(2, 16, 10, 9, dtype=F64).contiguous(memory_format=memory_format)
    x_high = torch.randn(2, 12, 5, 4, dtype=F64).contiguous(memory_format=memory_format)
    weight = torch.randn(2, 16, 10, 9, dtype=F64)
    got = _outputs_and_grads(target, target, x_low, x_high, weight)
    spec = _outputs_and_grads(source, lambda a, b: spec_ddsm(source, a, b), x_low, x_high, weight)
    _assert_same(got, spec)


def _forward_flops(make_forward) -> int:
    """Forward FLOPs of DDSM(256, 256) at 64x128 with x_high 16x32, batch 1, counted
    on fake tensors (shapes only, nothing computed)."""
    with FakeTensorMode():
        layer = DDSM(256, 256, backend="reference")
        x_low, x_high = torch.randn(1, 256, 64, 128), torch.randn(1, 256, 16, 32)
        with FlopCounterMode(display=False) as counter:
            make_forward(layer)(x_low, x_high)
    return counter.get_total_flops()


def test_forward_flops_goal_at_64x128():
    fast = _forward_flops(lambda layer: layer)
    spec = _forward_flops(lambda layer: lambda a, b: spec_ddsm(layer, a, b))
    # Saved: value and the key's x_high half, (16 - 1) / 16 of 2 * 8192 * 256 * 256 each.
    saved = 2 * 2 * (64 * 128 - 16 * 32) * 256 * 256
    assert spec - fast == saved, (spec, fast)
    assert fast <= 5.0e9, f"{fast / 1e9:.3f} GFLOP forward, goal <= 5.0"
