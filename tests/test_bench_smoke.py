"""Smoke test: a toy sweep end to end into a temporary directory (no timing asserted)."""

from __future__ import annotations

import csv

import pytest

from ddsm_triton.bench import records
from ddsm_triton.bench.__main__ import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run ``--tiny`` once for every test here; torch.compile with the cheap "eager"
    backend so the compiled path runs without inductor's minutes of warm-up."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--tiny", "--out", str(out), "--compile-backend", "eager", "--quiet"]
    assert main([*argv, "--no-kernel-report", "--device", "cpu"]) == 0
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        return out, tuple(reader.fieldnames), list(reader)


def test_csv_has_the_schema_and_rows(tiny_run) -> None:
    _, columns, rows = tiny_run
    assert columns == records.COLUMNS
    assert len(rows) > 50
    assert all(row["device"] and row["torch"] for row in rows)
    kinds = {row["kind"] for row in rows}
    assert {"op:spatial", "op:channel", "module"} <= kinds


def test_every_case_reports_memory_and_eager_latency(tiny_run) -> None:
    _, _, rows = tiny_run
    cases = {(r["kind"], r["map_h"], r["map_w"], r["config"]) for r in rows if r["kind"]}
    saved = {(r["kind"], r["map_h"], r["map_w"], r["config"]) for r in rows
             if r["metric"] == "saved_bytes" and r["impl"] == "eager"}  # fmt: skip
    assert cases == saved
    latency = [r for r in rows if r["metric"] == "fwdbwd_ms_p50" and r["impl"] == "eager"]
    assert latency and all(float(r["value"]) > 0 for r in latency)


def test_compiled_peer_is_checked_before_it_is_timed(tiny_run) -> None:
    _, _, rows = tiny_run
    checks = [r for r in rows if r["impl"] == "compiled" and r["metric"] == "check_rel_err"]
    assert checks, "tiny mode compiles at its smallest size"
    assert all(r["note"].startswith(("ok", "WRONG")) for r in checks)


def test_triton_parity_or_a_plain_reason(tiny_run) -> None:
    _, _, rows = tiny_run
    parity = [r for r in rows if r["impl"] == "triton" and r["metric"] == "parity_rel_err"]
    unavailable = [r for r in rows if r["impl"] == "triton" and r["config"] == "all"]
    assert parity or unavailable
    # Under the interpreter Triton is never timed.
    assert not [r for r in rows if r["impl"] == "triton" and "_ms_" in r["metric"]]


def test_outputs_exist(tiny_run) -> None:
    out, _, _ = tiny_run
    for name in ("latency_vs_pixels.png", "speedup_named.png", "memory_vs_pixels.png"):
        path = out / name
        assert path.exists() and path.stat().st_size > 10_000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "eager fwd/f+b" in summary and "op:spatial" in summary


def test_replot_redraws_from_the_csv(tiny_run) -> None:
    out, _, _ = tiny_run
    (out / "speedup_named.png").unlink()
    assert main(["--replot", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "speedup_named.png").stat().st_size > 10_000


def test_grid_sample_peer_is_checked_timed_and_compared(tiny_run) -> None:
    """The "torch" (grid_sample) peer: checked against eager before it is timed,
    wherever eager ran, and quoted against eager and the fastest PyTorch peer."""
    out, _, rows = tiny_run
    checks = [r for r in rows if r["impl"] == "torch" and r["metric"] == "check_rel_err"]
    eager_timed = {
        (r["kind"], r["config"], r["map_h"], r["map_w"])
        for r in rows
        if r["impl"] == "eager" and r["metric"] == "fwdbwd_ms_p50"
    }
    assert {(r["kind"], r["config"], r["map_h"], r["map_w"]) for r in checks} == eager_timed
    assert all(r["note"].startswith("ok") for r in checks)
    timed = [r for r in rows if r["impl"] == "torch" and r["metric"] == "fwdbwd_ms_p50"]
    assert len(timed) == len(checks) and all(float(r["value"]) > 0 for r in timed)
    summary = (out / "summary.md").read_text()
    assert "torch fwd/f+b" in summary and "torch/eager fwd, f+b" in summary
    assert "triton vs fastest" in summary
