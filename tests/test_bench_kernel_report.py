"""The static kernel report: every kernel, in every configuration and dtype the library
can launch, compiles for sm_80 and sm_90 without spilling and with wide loads.

Compiling takes several minutes per architecture on two cores the first time (Triton
caches the binaries afterwards), so each architecture is compiled once, by one test.
"""

from __future__ import annotations

import pytest
import torch

import ddsm_triton.kernels as kernels
from ddsm_triton.bench.kernel_report import (
    DTYPES,
    format_table,
    kernel_report,
    load_widths,
    resident_warps,
)


@pytest.mark.parametrize("arch", [pytest.param(80, id="sm80"), pytest.param(90, id="sm90")])
def test_every_kernel_config_compiles_without_spills(arch):
    rows = kernel_report(arch)

    expected = {
        (variant.name, dtype)
        for variant in kernels.KERNEL_VARIANTS
        for dtype in DTYPES
        for _ in variant.configs(getattr(torch, dtype))
    }
    assert {(r["kernel"], r["dtype"]) for r in rows} == expected
    expected_count = sum(
        len(variant.configs(getattr(torch, dtype))) * len(variant.widths)
        for variant in kernels.KERNEL_VARIANTS
        for dtype in DTYPES
    )
    assert len(rows) == expected_count

    table = format_table(rows)
    for r in rows:
        where = f"{r['kernel']} {r['config']} {r['dtype']} sm_{arch}\n{table}"
        assert r["arch"] == arch
        assert r["spill_bytes"] == 0, f"spills: {where}"
        assert 0 < r["registers"] <= 255, where
        # Channels-last rows are contiguous: loads must be vectorised, for 16-bit
        # dtypes at least 4 elements (64 bits) per load.
        assert r["widest_load_bits"] >= 64, f"narrow loads: {where}"
        # Rows lie within one warp: reductions are shuffles, not barriers. The goals are
        # Hopper's: sm_80 has no vector atomics, and its atomic backward relays out each
        # scattered tile through shared memory (20-36 barriers).
        if arch != 90 or r["dtype"] not in ("float32", "bfloat16"):
            continue
        if r["kernel"] == "dsa_fwd":
            assert r["bar_sync"] <= 2, f"barriers: {where}"
        if r["kernel"] == "dsa_bwd[atomic]":
            assert r["bar_sync"] <= 8, f"barriers: {where}"


@pytest.mark.parametrize(
    ("sass", "bits"),
    [
        pytest.param("LDG.E.128 R4, desc[UR4][R2.64] ;", 128, id="ldg128"),
        pytest.param("LDG.E.64.CONSTANT R4, [R2.64] ;\nLDG.E R8, [R6.64] ;", 64, id="ldg64"),
        pytest.param("LDG.E.U16 R4, [R2.64] ;", 16, id="ldg16"),
        pytest.param("LDG.E R4, [R2.64] ;\nSTG.E.128 [R2.64], R4 ;", 32, id="ldg32-stg-ignored"),
        pytest.param("LDS.128 R4, [R2] ;", 0, id="shared-ignored"),
    ],
)
def test_widest_load_parsing(sass, bits):
    assert max(load_widths(sass), default=0) == bits


def test_resident_warps_from_registers_and_shared_memory():
    assert resident_warps(64, 0, 4, 90) == 32  # 64 regs: 8 blocks of 4 warps
    assert resident_warps(72, 0, 4, 90) == 28
    assert resident_warps(255, 0, 4, 90) == 8
    assert resident_warps(32, 0, 4, 90) == 64  # capped by the 64 warps of an SM
    assert resident_warps(32, 100 * 1024, 4, 90) == 8  # two blocks fit in shared memory


def test_format_table_lists_every_row():
    row = {
        "kernel": "k",
        "config": "BLOCK=1",
        "widths": "D=16",
        "dtype": "float32",
        "arch": 90,
        "registers": 40,
        "spill_bytes": 0,
        "shared_bytes": 0,
        "widest_load_bits": 128,
    }
    lines = format_table([row, {**row, "kernel": "other"}]).splitlines()
    assert len(lines) == 4 and lines[2].startswith("k ") and lines[3].startswith("other")
