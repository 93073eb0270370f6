"""The traffic meter (bench/traffic.py): exact on a kernel whose traffic is known, and the
kernels' traffic goals on small shapes, for every GPU configuration, so a regression fails.

The goals are checked against the exact floors (gathers of in-bounds corners only): on
these small maps many corners fall outside, which would hide an over-read against the
4 N corners floor.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from ddsm_triton.bench import traffic

pytestmark = pytest.mark.interpreter


@triton.jit
def _known_traffic_kernel(x_ptr, y_ptr, acc_ptr, n, BLOCK: tl.constexpr):
    """Loads n float32, stores n float16, adds n float32 atomically, plus one unmasked
    float32 load of BLOCK elements."""
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, x.to(tl.float16), mask=mask)
    tl.atomic_add(acc_ptr + offs, x, mask=mask)
    tl.load(x_ptr + offs)


def test_meter_counts_a_known_kernel_exactly():
    x = torch.randn(64)
    y = torch.zeros(64, dtype=torch.float16)
    acc = torch.zeros(64)
    with traffic.count_traffic() as seen:
        _known_traffic_kernel[(3,)](x, y, acc, 37, BLOCK=64)
    assert seen["load"] == 3 * (37 * 4 + 64 * 4)
    assert seen["store"] == 3 * 37 * 2
    assert seen["atomic"] == 3 * 37 * 4
    assert seen["atomic elements"] == 3 * 37
    torch.testing.assert_close(acc, 3 * torch.where(torch.arange(64) < 37, x, 0.0))


def test_meter_restores_the_builder():
    from triton.runtime.interpreter import InterpreterBuilder

    before = InterpreterBuilder.create_masked_load
    with traffic.count_traffic():
        assert InterpreterBuilder.create_masked_load is not before
    assert InterpreterBuilder.create_masked_load is before


def test_in_bounds_corners_counts_the_border():
    # One 2x2 map, one cell, N = 1, sample at (0.5, 0.5): all four corners inside;
    # at (-0.5, 0.5): the top two are outside; NaN: none.
    offsets = torch.tensor([0.5, 0.5]).view(1, 1, 1, 1, 1, 2).expand(1, 2, 2, 1, 1, 2).clone()
    offsets[0, 0, 0, 0, 0] = torch.tensor([-0.5, 0.5])  # cell (0, 0) -> (-0.5, 0.5)
    offsets[0, 1, 1, 0, 0] = float("nan")
    # cells (0, 1) -> (0.5, 1.5): right corners outside; (1, 0) -> (1.5, 0.5): bottom out.
    assert traffic.in_bounds_corners(offsets, 1) == 2 + 2 + 2 + 0


GOAL_SHAPES = [
    pytest.param(traffic.Shape("narrow", 1, 5, 5, 2, 16, 16, 3), id="narrow-G2-D16-N9"),
    pytest.param(traffic.Shape("wide", 1, 3, 3, 1, 16, 520, 3), id="wide-Dk16-Dv520"),
]


@pytest.mark.parametrize("shape", GOAL_SHAPES)
def test_kernels_meet_the_traffic_goals_in_every_config(shape):
    rows = traffic.measure_shape(shape)
    from ddsm_triton.kernels import KERNEL_VARIANTS

    assert len(rows) == max(len(v.configs(torch.float32)) for v in KERNEL_VARIANTS)
    for row in rows:
        where = f"{row['config']}: {row}"
        assert row["forward_x_exact"] <= 1.05, where
        assert row["backward_loads_x_exact"] <= 1.1, where
        assert row["backward_atomics_exact"], where
        # Below the exact floor would mean a corner or a channel was skipped.
        assert row["forward_x_exact"] >= 0.9 and row["backward_loads_x_exact"] >= 0.9, where
