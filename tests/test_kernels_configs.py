"""Launch configurations, block shapes, tuning keys and the first-call compile count:
the kernels' host-side rules, checked without running a kernel."""

from __future__ import annotations

import pytest
import torch

import ddsm_triton.kernels as kernels
from ddsm_triton.kernels.dynamic_sample_attention import configs as dsa_configs

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (Dk, Dv, N) of the op's typical launches: spatial heads, and the channel branch.
SHAPES = ((256, 256, 9), (64, 64, 9), (16, 16, 9), (64, 64, 25), (64, 2048, 9))


def test_every_kernel_has_a_config_for_every_dtype():
    for variant in kernels.KERNEL_VARIANTS:
        for dtype in DTYPES:
            assert variant.configs(dtype), (variant.name, dtype)


def _launches(dtype: torch.dtype):
    """(variant, config, block shape, widths) of every launch at SHAPES."""
    for DK, DV, _ in SHAPES:
        path = (
            "wide"
            if kernels.dynamic_sample_attention.__module__ and dsa_configs.wide(DV)
            else "narrow"
        )
        for variant in kernels.KERNEL_VARIANTS:
            if variant.path not in (path, "both"):
                continue
            widths = [{"DK": DK, "DV": DV}]
            if variant.config_key == "segment_sum":
                widths = [{"D": DK}, {"D": DV}]
            for w in widths:
                for config in variant.configs(dtype):
                    w = {**w, **variant.widths[0]} if variant.config_key == "dsa_wide" else w
                    yield variant, config, variant.constexprs(config, w, dtype), w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_no_config_idles_half_its_lanes(dtype):
    """Channel blocks follow the widths (next power of two), and every thread of a
    program holds at least one element of its cells x channels tile."""
    seen = 0
    for variant, config, blocks, widths in _launches(dtype):
        where = (variant.name, config, widths)
        for block, width in (("BLOCK_DK", "DK"), ("BLOCK_DV", "DV"), ("BLOCK_D", "D")):
            if block in blocks and width in widths and block in ("BLOCK_DK", "BLOCK_D"):
                assert widths[width] * 2 > blocks[block], where
        rows = blocks.get("BLOCK_P", blocks.get("BLOCK_R"))
        channels = max(v for k, v in blocks.items() if k.startswith("BLOCK_D"))
        assert rows * channels >= 32 * config.num_warps, where
        seen += 1
    assert seen >= len(kernels.KERNEL_VARIANTS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [16, 64, 256])
def test_a_row_lies_within_one_warp(dtype, D):
    """A chunk is what one warp reads with 16-byte loads, so a row's reduction is a
    warp shuffle: at most 32 lanes of LOAD_BYTES per chunk."""
    for config in dsa_configs.CONFIGS["dsa_fwd"]:
        blocks = dsa_configs.block_sizes(
            "dsa_fwd", config.kwargs["TILE"], {"DK": D, "DV": D}, dtype.itemsize
        )
        assert blocks["CHUNK_K"] * dtype.itemsize <= 32 * dsa_configs.LOAD_BYTES
        assert blocks["BLOCK_DK"] % blocks["CHUNK_K"] == 0


def test_wide_backward_fills_an_h100_at_cityscapes_stride_4():
    """Channel branch at Cityscapes stride 4: P = 512 cells, Dv = 8192. The Dv-split
    kernel launches at least 4 programs per SM of a 132-SM GPU in every config."""
    P, DV = 512, 8192
    assert dsa_configs.wide(DV)
    for config in dsa_configs.CONFIGS["dsa_wide"]:
        blocks = dsa_configs.block_sizes("dsa_wide", config.kwargs["TILE"], config.kwargs, 4)
        programs = -(-P // blocks["BLOCK_P"]) * -(-DV // config.kwargs["BLOCK_DV"])
        assert programs >= 4 * 132, (config, programs)


def test_tuning_bucket_is_a_power_of_two_bucket():
    bucket = dsa_configs.tuning_bucket
    assert bucket(1000, 48, 64) == bucket(1000, 64, 64) != bucket(1000, 65, 64)
    assert bucket(32 * 32, 64) != bucket(256 * 512, 64)


def test_small_grids_take_one_config():
    many = dsa_configs.configs_for("dsa_fwd", torch.float32)
    assert len(many) > 1
    assert dsa_configs.configs_for("dsa_fwd", torch.float32, 512) == many[:1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_first_call_compiles_at_most_eight_configs(dtype):
    launches = kernels.first_call_launches(dtype)
    distinct = {(launch.variant, launch.key): launch.configs for launch in launches}
    assert sum(len(c) for c in distinct.values()) <= 8
    assert {launch.variant for launch in launches} >= {"dsa_fwd", "dsa_bwd[atomic]", "dsa_logits"}
