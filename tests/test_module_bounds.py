"""The channel branch's sizes have upper bounds that a real input can meet, checked at
construction (all three are static), before any parameter is allocated.

* ``pool_size`` <= 1024: Dk = pool_size**2 must fit one Triton block (2**20 elements);
  one more channel and the kernels fail to build.
* ``channel_kernel_size`` <= 2s + 1 on the s x s channel grid: a wider window's outer
  rings start two or more cells off the grid for every channel, where they sample zero
  and get zero gradient, so they could never learn to contribute.
* ``value_down`` < 2**24: beyond any feature map's side; a factor beyond the map's side
  pools it to 1 x 1, which is defined (so nothing is checked against the input).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddsm_triton import DDSM, ChannelDynamicAffinity, dynamic_sample_attention

F64 = torch.float64


@pytest.fixture
def no_large_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any convolution with more than 10**6 weights, before it allocates them."""
    original = nn.Conv2d.__init__

    def guarded(self, in_channels, out_channels, kernel_size, *args, **kwargs):
        side = kernel_size if isinstance(kernel_size, int) else max(kernel_size)
        weights = in_channels * out_channels * side * side
        assert weights <= 10**6, f"allocating a {weights:,}-weight convolution"
        original(self, in_channels, out_channels, kernel_size, *args, **kwargs)

    monkeypatch.setattr(nn.Conv2d, "__init__", guarded)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            dict(pool_size=10**6), r"pool_size must be <= 1024 .*got 1000000", id="pool-1e6"
        ),
        pytest.param(dict(pool_size=1025), r"pool_size must be <= 1024 .*got 1025", id="pool-1025"),
        pytest.param(
            dict(dim=4, channel_kernel_size=7),
            r"channel_kernel_size must be <= 5 \(2\*s \+ 1 for the 2x2 channel grid.*got 7",
            id="kc-7-on-2x2",
        ),
        pytest.param(
            dict(channel_kernel_size=10**5 + 1), r"channel_kernel_size must be <= 17 ", id="kc-huge"
        ),
        pytest.param(dict(value_down=2**24), r"value_down must be <= 16777215 ", id="down-2**24"),
    ],
)
@pytest.mark.parametrize("module", [DDSM, ChannelDynamicAffinity], ids=["ddsm", "channel"])
def test_sizes_beyond_their_bound_raise_before_allocating(
    module, kwargs, match, no_large_convolutions
):
    with pytest.raises(ValueError, match=match):
        module(64, 64, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(dim=1, pool_size=1, channel_kernel_size=3), id="kc-3-on-1x1"),
        pytest.param(dict(dim=4, pool_size=1, channel_kernel_size=5), id="kc-5-on-2x2"),
        pytest.param(dict(dim=4, pool_size=1, value_down=2**24 - 1), id="down-2**24-1"),
    ],
)
def test_sizes_at_their_bound_run(kwargs):
    layer = ChannelDynamicAffinity(4, 3, **kwargs).double()
    nn.init.normal_(layer.offset.bias, std=0.5)
    y = layer(torch.randn(2, 4, 5, 4, dtype=F64), torch.randn(2, 3, 3, 2, dtype=F64))
    assert y.shape == (2, 4, 5, 4) and torch.isfinite(y).all()


def test_largest_pool_size_builds():
    layer = ChannelDynamicAffinity(1, 1, dim=1, pool_size=1024, channel_kernel_size=1)
    assert layer.offset.weight.shape == (2, 1024 * 1024, 3, 3)


def test_value_down_beyond_the_map_pools_it_to_one_pixel():
    """No bound against the input: any factor >= the map's side gives the 1 x 1 mean."""
    small = ChannelDynamicAffinity(4, 3, dim=4, pool_size=2, value_down=3).double()
    large = ChannelDynamicAffinity(4, 3, dim=4, pool_size=2, value_down=1000).double()
    large.load_state_dict(small.state_dict())
    x_low, x_high = torch.randn(2, 4, 5, 4, dtype=F64), torch.randn(2, 3, 3, 2, dtype=F64)
    torch.testing.assert_close(large(x_low, x_high), small(x_low, x_high), rtol=0, atol=0)


@pytest.mark.parametrize("side", [1, 2, 3])
def test_rings_beyond_2s_plus_1_never_reach_the_channel_grid(side):
    """Why ``channel_kernel_size <= 2s + 1``: on an s x s grid with the window of
    kc = 2s + 3 and zero offsets (as a fresh layer has), the outermost ring samples zero
    and gets zero offset gradient for every channel, while the ring inside it, the
    last that the bound allows, gets a gradient somewhere."""
    kc = 2 * side + 3
    shape = (2, side, side, 1)
    query, key, value = (torch.randn(*shape, 5, dtype=F64) for _ in range(3))
    offsets = torch.zeros(*shape, kc * kc, 2, dtype=F64, requires_grad=True)
    out = dynamic_sample_attention(query, key, value, offsets, backend="reference")
    out.square().sum().backward()

    ring = torch.arange(kc) - kc // 2
    distance = torch.maximum(ring[:, None].abs(), ring[None, :].abs()).flatten()
    grad = offsets.grad.abs().sum(dim=(0, 1, 2, 3, 5))  # per sample n
    assert grad[distance == side + 1].max() == 0
    assert grad[distance == side].max() > 0
