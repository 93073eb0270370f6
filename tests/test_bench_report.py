"""The benchmark's plan, time budget, summary and plots, on made-up rows (no measuring)."""

from __future__ import annotations

import time

import pytest

from ddsm_triton.bench import report
from ddsm_triton.bench.cases import KINDS, NAMED, PARITY, io_floor_bytes, make_case, plan
from ddsm_triton.bench.measure import Budget
from ddsm_triton.bench.records import Recorder

#: Made-up medians (ms): torch is the fastest PyTorch backend, Triton 4x faster than it.
MS = {"reference": 10.0, "torch": 4.0, "triton": 1.0, "triton+deterministic": 2.0}


def test_gpu_plan_is_every_named_point_kind_and_dtype() -> None:
    entries = plan("gpu", cuda=True)
    checked = [c for c, _ in entries[: len(PARITY)]]
    assert checked == list(PARITY)  # first, every backend, checked and not timed
    entries = entries[len(PARITY) :]
    timed = {(c.kind, (c.map_h, c.map_w), c.dtype) for c, b in entries if "triton" in b}
    assert timed == {(k, hw, d) for k in KINDS for hw in NAMED for d in ("bf16", "fp32")}
    assert all("triton+deterministic" in b for c, b in entries if "triton" in b)
    compiled = [c for c, b in entries if b == ("reference+compile",)]
    assert compiled and entries[-len(compiled) :] == [(c, ("reference+compile",)) for c in compiled]
    assert {c.config for c, _ in entries} == set(NAMED.values())


def test_cpu_plan_times_no_triton_and_checks_it_on_the_parity_cases() -> None:
    entries = plan("quick", cuda=False)
    assert all(b[-1] == "triton+deterministic" for c, b in entries if c in PARITY)
    assert all("triton" not in " ".join(b) for c, b in entries if c not in PARITY)


def test_io_floor_by_hand() -> None:
    case = make_case("op:spatial", (2, 3), batch=1, dim=4)  # 6 cells, Dk = Dv = 4, N = 9
    inputs = 6 * (4 + 4 + 4 + 9 * 2) * 4  # q, k, v, offsets in fp32
    assert io_floor_bytes(case) == (inputs + 6 * 4 * 4, 2 * (inputs + 96) + inputs)


def test_budget_predicts_from_the_slowest_rate_and_says_why() -> None:
    budget = Budget(total_s=100, call_s=2.0)
    assert budget.reason(("module", "torch"), work=10**9) is None  # nothing seen yet
    budget.observe(("module", "torch"), work=10**8, seconds=0.5)
    assert budget.reason(("module", "torch"), work=2 * 10**8) is None  # 1 s predicted
    assert "predicted at 5.0 s" in budget.reason(("module", "torch"), work=10**9)
    late = Budget(total_s=-1, call_s=2.0)
    assert "time budget" in late.reason(("module", "torch"), work=1)
    assert late.deadline < time.perf_counter()


@pytest.fixture
def frame():
    """Rows as a GPU profile would write them, at every named point."""
    rec = Recorder("card", "t", "tr")
    rec.add(None, "all", "copy_gbps", 3000.0)
    for case, backends in plan("gpu", cuda=True):
        for b in backends:
            rec.add(case, b, "saved_bytes", 2**20 * (1 + len(b)))
            rec.add(case, b, "fwd_ms", MS.get(b, 20.0) / 2)
            rec.add(case, b, "fwdbwd_ms", MS.get(b, 20.0))
            if case.kind != "module":
                rec.add(case, b, "fwd_gbps", 50.0 / MS.get(b, 20.0))
                rec.add(case, b, "fwdbwd_gbps", 100.0 / MS.get(b, 20.0))
    return rec.frame()


def test_speedups_are_over_the_fastest_pytorch_backend(frame) -> None:
    s = report.speedups(report._cases(frame), "fwdbwd")
    assert (s.fastest == "torch").all()
    assert (s.triton == 4.0).all() and (s["triton+deterministic"] == 2.0).all()
    assert (s.reference == 0.4).all()


def test_summary_lists_each_named_configuration(frame) -> None:
    text = report.summary(frame)
    for name in NAMED.values():
        assert name in text
    assert "Bandwidth" in text and "triton+deterministic" in text


def test_speedup_bars_and_bandwidth_plot(frame) -> None:
    figs = report.figures(frame)
    assert set(figs) >= {"speedup_named", "bandwidth_vs_pixels"}
    bars = figs["speedup_named"].axes[1]  # forward+backward
    heights = {round(p.get_height(), 6) for p in bars.patches}
    assert {0.4, 1.0, 4.0, 2.0} <= heights
    bandwidth = figs["bandwidth_vs_pixels"].axes[0]
    assert any(line.get_label() == "copy bandwidth" for line in bandwidth.get_lines())
