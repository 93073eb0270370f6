"""The benchmark end to end on toy shapes (``--tiny``, on CPU): what it writes, and that
what it writes is right. No timing is asserted."""

from __future__ import annotations

import struct

import pandas as pd
import pytest
import torch

from ddsm_triton.bench import __main__ as bench
from ddsm_triton.bench import records, report
from ddsm_triton.bench.cases import build, make_case
from ddsm_triton.memory import saved_bytes

pytestmark = pytest.mark.interpreter  # the Triton parity checks run interpreted

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple:
    """One ``--tiny`` run for every test here; torch.compile with the "eager" backend
    (inductor would compile for minutes)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--tiny", "--out", str(out), "--compiler", "eager", "--no-static", "--quiet"]
    assert bench.main(argv) == 0
    return out, pd.read_csv(out / "results.csv")


def test_csv_has_the_columns_and_every_kind(tiny) -> None:
    _, df = tiny
    assert tuple(df.columns) == records.COLUMNS
    assert df.device.notna().all() and (df.torch == torch.__version__).all()
    assert set(df.kind.dropna()) == {"op:spatial", "op:channel", "module"}
    assert not df.metric.isin(["error"]).any(), df[df.metric == "error"].note.tolist()
    assert set(df.unit[df.metric.str.endswith("_ms")]) == {"ms"}


def test_every_backend_passes_parity_with_the_reference(tiny) -> None:
    _, df = tiny
    parity = df[(df.metric == "check_err") & (df.config == "parity")]
    backends = ("reference", "torch", "triton", "triton+deterministic")
    expected = {(k, b) for k in ("op:spatial", "op:channel", "module") for b in backends}
    assert set(zip(parity.kind, parity.backend, strict=True)) == expected
    assert (parity.value <= 5e-3).all() and parity.note.str.startswith("ok").all()
    assert not df[df.config == "parity"].metric.str.endswith("_ms").any()  # checked only


def test_a_backend_is_timed_only_after_it_matched_the_reference(tiny) -> None:
    _, df = tiny
    key = ["kind", "map_h", "map_w", "config", "backend"]
    timed = df[df.metric == "fwdbwd_ms"].set_index(key)
    checks = df[df.metric == "check_err"].set_index(key)
    others = timed.index[timed.index.get_level_values("backend") != "reference"]
    assert len(others) and others.isin(checks.index).all()
    assert checks.note.str.startswith("ok").all()
    assert "reference+compile" in set(checks.index.get_level_values("backend"))
    assert (timed.value > 0).all()
    assert not (df.backend.str.startswith("triton") & df.metric.str.endswith("_ms")).any()


def test_saved_bytes_equal_a_direct_count(tiny) -> None:
    _, df = tiny
    diff = df[df.metric == "fake_minus_real_bytes"].value
    assert len(diff) == 12 and (diff == 0).all()  # 3 parity cases x 4 backends
    case = make_case("op:spatial", (16, 16), batch=1, dim=16)
    for backend in ("reference", "torch", "triton"):
        wl = build(case, backend, CPU)
        direct = saved_bytes(wl.fwd, wl.leaves()).total
        where = (df.backend == backend) & (df.kind == case.kind) & (df.map_h == 16)
        row = df[where & (df.metric == "saved_bytes") & (df.config == "size")]
        assert row.value.tolist() == [direct], backend


def test_summary_names_every_case_and_backend(tiny) -> None:
    out, df = tiny
    text = (out / "summary.md").read_text()
    for word in ("op:spatial", "op:channel", "module", "8x8", "16x16", "reference+compile"):
        assert word in text
    checks = df[(df.metric == "check_err") & (df.config != "parity")]
    assert f"{len(checks)} of {len(checks)} backends matched the reference" in text


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plots_draw_each_backend_against_pixels(tiny) -> None:
    out, df = tiny
    figs = report.figures(df)
    assert set(figs) == {"latency_vs_pixels", "speedup_named", "memory_vs_pixels"}
    latency = figs["latency_vs_pixels"].axes
    assert [ax.get_title() for ax in latency[:3]] == [
        f"{k}: forward" for k in ("op:spatial", "op:channel", "module")
    ]
    lines = {line.get_label(): line for line in latency[0].get_lines()}
    assert {"reference fp32", "torch fp32"} <= set(lines)
    assert list(lines["torch fp32"].get_xdata()) == [64, 256]  # pixels of 8x8 and 16x16
    memory = {line.get_label() for line in figs["memory_vs_pixels"].axes[0].get_lines()}
    assert {"reference fp32", "torch fp32", "triton fp32"} <= memory
    for name, fig in figs.items():
        width, height = fig.get_size_inches() * 80
        assert _png_size(out / f"{name}.png") == (round(width), round(height))
