"""Unit tests of the benchmark's measurement helpers (no timing is asserted)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from ddsm_triton.bench import configs, kernel_stats, measure, records
from ddsm_triton.bench.runner import CpuGate
from ddsm_triton.bench.workloads import build

F32 = torch.float32


def test_fake_mode_count_equals_a_real_run() -> None:
    case = configs.make_case("op:spatial", (5, 6), batch=1, dim=8, groups=2)

    def count() -> int:
        wl = build(case, "eager", torch.device("cpu"))
        return measure.saved_bytes(lambda: wl.run(0), wl.leaves()).total

    real = count()
    with measure.fake_mode():
        fake = count()
    assert real > 0 and fake == real


# ------------------------------------------------------------------ floor, bandwidth
def test_op_floor_hand_computed() -> None:
    # B=1, 2x3 grid, G=1 -> 6 cells; Dk=4, Dv=5, N=9, float32 (4 bytes).
    floor = measure.op_floor(1, 2, 3, 1, 9, 4, 5, F32)
    q = k = 6 * 4 * 4  # 96 bytes each
    v = out = 6 * 5 * 4  # 120
    off = 6 * 9 * 2 * 4  # 432
    inputs = q + k + v + off  # 744
    assert floor.forward == inputs + out == 864
    # backward reads q, k, v, offsets and dout, writes the four gradients
    assert floor.backward == inputs + out + inputs == 1608
    assert floor.forward_backward == 2472


def test_op_floor_scales_with_dtype() -> None:
    full = measure.op_floor(2, 4, 4, 2, 9, 8, 8, F32)
    half = measure.op_floor(2, 4, 4, 2, 9, 8, 8, torch.bfloat16)
    assert 2 * half.forward == full.forward and 2 * half.backward == full.backward


def test_bandwidth_fraction() -> None:
    # 1 GB in 1 ms is 1 TB/s; against a 2 TB/s copy that is half the floor speed.
    assert measure.bandwidth_fraction(10**9, 1.0, 2000.0) == pytest.approx(0.5)


# ------------------------------------------------------------------ timing helpers
def test_quantile_interpolates() -> None:
    assert measure.quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert measure.quantile([0.0, 10.0], 0.2) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        measure.quantile([], 0.5)


def test_time_cpu_respects_min_reps_and_orders_quantiles() -> None:
    calls = []
    t = measure.time_cpu(lambda: calls.append(1), warmup=2, min_reps=4, budget_s=0.0)
    assert t.samples == 4 and len(calls) == 6
    assert t.p20_ms <= t.p50_ms <= t.p80_ms


# ------------------------------------------------------------------ correctness check
def test_compare_flags_a_dropped_gradient() -> None:
    expected = {"out": torch.randn(10), "grad value": torch.randn(10)}
    right = {k: v * (1 + 1e-6) for k, v in expected.items()}
    wrong = {"out": expected["out"], "grad value": torch.zeros(10)}
    assert measure.compare(right, expected, F32).ok
    check = measure.compare(wrong, expected, F32)
    assert not check.ok and check.worst_name == "grad value"
    assert check.worst_error == pytest.approx(1.0)
    assert check.describe().startswith("WRONG")
    missing = measure.compare({"out": expected["out"]}, expected, F32)
    assert not missing.ok and missing.worst_error == float("inf")


# ------------------------------------------------------------------ CSV schema
def test_csv_schema(tmp_path) -> None:
    rec = records.Recorder("test-device", "2.x", "3.x")
    case = configs.make_case("op:channel", (64, 128))
    rec.add(case, "eager", "fwd_ms_p50", 1.5, "perf_counter")
    rec.add(None, "copy", "copy_bandwidth", 3000.0, config="device")
    path = tmp_path / "r.csv"
    rec.write(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == records.COLUMNS
        rows = list(reader)
    for column in ("device", "torch", "triton", "config", "dtype", "impl", "metric", "value"):
        assert column in records.COLUMNS
    assert (rows[0]["unit"], rows[0]["config"], rows[0]["value"]) == ("ms", "size", "1.5")
    assert rows[0]["dv"] == str(configs.channel_value_dim(64, 128)) == str(32 * 64 // 4)
    assert rows[0]["grid_h"] == rows[0]["grid_w"] == "16"
    assert rows[1]["kind"] == "" and rows[1]["unit"] == "GB/s"


# ------------------------------------------------------------------ configs
def test_plan_has_named_configs_and_explains_impossible_points() -> None:
    plan = configs.build_plan("quick", cuda=False)
    named = {(c.kind, c.config) for c in plan.cases if c.config.startswith("cityscapes")}
    assert named == {(k, n) for k in configs.KINDS for n in configs.NAMED.values()}
    for case in plan.cases:
        if case.config.startswith("cityscapes"):
            assert (case.batch, case.dim, case.dtype) == (2, 256, "fp32")
    # dim 128 is not a perfect square: no channel branch, so no module either.
    full = configs.build_plan("full", cuda=False)
    assert {s.kind for s in full.impossible if s.dim == 128} == {"op:channel", "module"}
    assert all(c.dtype == "fp32" for c in plan.cases)  # half types are CUDA only
    cuda = configs.build_plan("quick", cuda=True)
    assert {c.dtype for c in cuda.cases} == {"fp32", "bf16", "fp16"}


def test_channel_case_shapes() -> None:
    case = configs.make_case("op:channel", (256, 512))
    assert (case.grid_h, case.grid_w, case.groups, case.samples) == (16, 16, 1, 9)
    assert (case.dk, case.dv) == (64, 128 * 256 // 4)


# ------------------------------------------------------------------ CPU gate
def test_cpu_gate_extrapolates_and_guards_memory() -> None:
    gate = CpuGate(call_budget_s=2.0, available_bytes=10 * 2**30)
    assert gate.skip_reason("op:spatial", 100 << 20) is None  # first case: nothing known
    gate.observe("op:spatial", 100 << 20, 1.0)  # 1 s per 100 MiB
    assert gate.skip_reason("op:spatial", 150 << 20) is None  # ~1.5 s
    assert "CPU too slow" in gate.skip_reason("op:spatial", 400 << 20)  # ~4 s
    assert "RAM" in gate.skip_reason("module", 8 * 2**30)


# ------------------------------------------------------------------ kernel report
def test_kernel_report_is_reused_and_recorded(tmp_path, monkeypatch) -> None:
    entry = {"kernel": "fwd", "config": "BLOCK=64", "dtype": "float32", "arch": 90,
             "registers": 96, "stack_bytes": 0, "local_bytes": 0, "shared_bytes": 0,
             "widest_load_bits": 128}  # fmt: skip
    monkeypatch.setattr(kernel_stats, "collect", lambda arch: ([entry], "1 kernel"))
    path = tmp_path / "kernel_report.json"
    entries, _ = kernel_stats.collect_cached(90, path)
    kernel_stats.write(entries, "1 kernel", 90, path)
    assert json.loads(path.read_text())["kernels"] == [entry]

    def fail(arch):
        raise AssertionError("should have reused the report")

    monkeypatch.setattr(kernel_stats, "collect", fail)
    reused, message = kernel_stats.collect_cached(90, path)
    assert reused == [entry] and "reused" in message

    rec = records.Recorder("d", "t", "tr")
    kernel_stats.record(reused, rec)
    assert {r["metric"] for r in rec.rows} == set(kernel_stats.REPORT_METRICS)
    assert all(r["config"] == "kernel:fwd BLOCK=64" for r in rec.rows)


def test_kernel_report_unavailable_is_a_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(kernel_stats, "collect", lambda arch: (None, "not importable"))
    entries, message = kernel_stats.collect_cached(90, tmp_path / "none.json")
    assert entries is None and message == "not importable"
    kernel_stats.write(entries, message, 90, tmp_path / "k.json")
    assert json.loads((tmp_path / "k.json").read_text())["available"] is False
