"""The modules' fast projections are docs/semantics.md §2, exactly.

The modules compute value = up(Conv1x1(x_high')) and the x_high' half of the key at
x_high's resolution (a 1x1 convolution commutes with bilinear resizing), and write
every projection as a batched matmul in the op's layout. Here §2 is written out as
it states it (``utils.literal_ddsm``), with the convolutions at full resolution, and the
modules must match it in float64 to 1e-10: outputs, every parameter gradient and
both input gradients, also after a state_dict round trip. FLOPs are counted on fake
tensors, so the full-size count costs no compute.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode
from utils import F64, assert_close, literal_ddsm, randomise_offsets

from ddsm_triton import DDSM


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
    assert_close(y, y0, msg="output")
    assert_close(gl, gl0, msg="x_low gradient")
    assert_close(gh, gh0, msg="x_high gradient")
    assert gp.keys() == gp0.keys()
    for name, grad in gp0.items():
        assert grad is not None and grad.abs().max() > 0, f"{name}: no gradient to compare"
        assert_close(gp[name], grad, msg=name)


CONFIGS = [
    # (layer config, x_high (h, w)); x_low is (10, 9).
    pytest.param(dict(dim=16, groups=2, pool_size=3), (5, 4), id="g2-downsampled-high"),
    pytest.param(dict(dim=9, kernel_size=5, dilation=2, pos_embed=False), (3, 7), id="k5-no-pe"),
    pytest.param(dict(dim=16, groups=4, value_down=1), (10, 9), id="same-size-high"),
    pytest.param(dict(dim=16, pool_size=2), (13, 11), id="high-larger-than-low"),
]


@pytest.mark.parametrize(("config", "high_size"), CONFIGS)
def test_ddsm_equals_the_literal_composition_in_float64(config, high_size):
    layer = randomise_offsets(DDSM(16, 12, **config)).to(F64)
    x_low = torch.randn(2, 16, 10, 9, dtype=F64)
    x_high = torch.randn(2, 12, *high_size, dtype=F64)
    weight = torch.randn(2, 16, 10, 9, dtype=F64)
    got = _outputs_and_grads(layer, layer, x_low, x_high, weight)
    literal = _outputs_and_grads(
        layer, lambda a, b: literal_ddsm(layer, a, b), x_low, x_high, weight
    )
    _assert_same(got, literal)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_saved_state_dict_loads_and_gives_the_literal_outputs_and_gradients(
    tmp_path, memory_format
):
    """A state_dict saved by one layer (parameter names and shapes of docs/semantics.md
    §2, stored to disk) loads into a fresh layer, which then computes §2's function."""
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
    literal = _outputs_and_grads(
        source, lambda a, b: literal_ddsm(source, a, b), x_low, x_high, weight
    )
    _assert_same(got, literal)


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
    literal = _forward_flops(lambda layer: lambda a, b: literal_ddsm(layer, a, b))
    # Saved: value and the key's x_high half, (16 - 1) / 16 of 2 * 8192 * 256 * 256 each.
    saved = 2 * 2 * (64 * 128 - 16 * 32) * 256 * 256
    assert literal - fast == saved, (literal, fast)
    assert fast <= 5.0e9, f"{fast / 1e9:.3f} GFLOP forward, goal <= 5.0"
