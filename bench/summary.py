"""The compact end-of-run summary, built from the CSV rows alone."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from .records import as_float

IMPLS = ("eager", "compiled", "triton")
CASE_FIELDS = ("kind", "config", "batch", "map_h", "map_w", "dim", "groups", "samples", "dtype")


def _case_key(row: dict[str, str]) -> tuple:
    return tuple(row[f] for f in CASE_FIELDS)


def _cases(rows: Iterable[dict[str, str]]) -> dict[tuple, dict[tuple[str, str], dict]]:
    """Case key -> {(impl, metric): row}, in order of first appearance (benchmark cases only)."""
    cases: dict[tuple, dict[tuple[str, str], dict]] = {}
    for row in rows:
        if not row["kind"] or row["config"] == "parity":
            continue
        cases.setdefault(_case_key(row), {})[(row["impl"], row["metric"])] = row
    return cases


def _latency(metrics: dict, impl: str) -> str:
    """'fwd / f+b' medians in ms, or why there are none."""
    fwd, both = metrics.get((impl, "fwd_ms_p50")), metrics.get((impl, "fwdbwd_ms_p50"))
    if fwd and both:
        return f"{_num(as_float(fwd))} / {_num(as_float(both))}"
    check = metrics.get((impl, "check_rel_err"))
    if check and check["note"].startswith("WRONG"):
        return "WRONG"
    if (impl, "error") in metrics:
        return "error"
    if (impl, "skipped") in metrics:
        return "skip"
    return "-"


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def _mib(metrics: dict, impl: str) -> str:
    row = metrics.get((impl, "saved_bytes"))
    value = as_float(row) if row else None
    return "-" if value is None else f"{value / 2**20:.0f}"


def table(rows: list[dict[str, str]]) -> str:
    """One line per case: latency per impl (ms, median) and saved-for-backward MiB."""
    header = (
        f"{'kind':<10} {'config':<14} {'map':>7} {'B':>1} {'dim':>3} {'G':>1} {'N':>2} "
        f"{'dtype':<4} | {'eager fwd/f+b':>15} | {'compiled fwd/f+b':>16} | "
        f"{'triton fwd/f+b':>15} | {'saved MiB e/c/t':>16}"
    )
    lines = [header, "-" * len(header)]
    for key, metrics in _cases(rows).items():
        kind, config, batch, h, w, dim, groups, samples, dtype = key
        saved = "/".join(_mib(metrics, impl) for impl in IMPLS)
        lines.append(
            f"{kind:<10} {config:<14} {h + 'x' + w:>7} {batch:>1} {dim:>3} {groups:>1} "
            f"{samples:>2} {dtype:<4} | {_latency(metrics, 'eager'):>15} | "
            f"{_latency(metrics, 'compiled'):>16} | {_latency(metrics, 'triton'):>15} | "
            f"{saved:>16}"
        )
    return "\n".join(lines)


def notes(rows: list[dict[str, str]]) -> list[str]:
    """Checks, parity, compile times and every distinct skip reason, with counts."""
    out: list[str] = []
    for row in rows:
        metric, impl = row["metric"], row["impl"]
        shape = f"{row['kind']} {row['map_h']}x{row['map_w']} {row['dtype']}".strip()
        if metric == "parity_rel_err":
            out.append(f"parity  {impl} vs eager on {shape} (tiny): {row['note']}")
        elif metric == "saved_fake_minus_real":
            out.append(f"memory  {impl} {shape}: {row['note']} (diff {row['value']} B)")
        elif metric == "check_rel_err":
            out.append(f"check   {impl} vs eager on {shape} [{row['config']}]: {row['note']}")
        elif metric == "compile_s":
            out.append(f"compile {shape}: {float(row['value']):.0f} s ({row['note']})")
        elif metric == "copy_bandwidth":
            out.append(f"device  copy bandwidth {float(row['value']):.0f} GB/s")
        elif metric == "info":
            out.append(f"info    {row['note']}")
        elif metric == "wall_s":
            out.append(f"wall    {float(row['value']):.0f} s ({row['note']})")
    # A reason that differs only in its numbers (an estimate, a size) is listed once.
    reasons: Counter = Counter()
    example: dict[tuple[str, str], str] = {}
    for row in rows:
        if row["metric"] in ("skipped", "error"):
            key = (row["impl"], re.sub(r"\d+(\.\d+)?", "#", row["note"]))
            reasons[key] += 1
            example.setdefault(key, row["note"])
    for key, count in reasons.items():
        times = f" x{count}, e.g." if count > 1 else ""
        out.append(f"not run {key[0]}{times}: {example[key]}")
    return out


def render(rows: list[dict[str, str]]) -> str:
    """The full summary: environment line, table, notes."""
    env = rows[0] if rows else {"device": "?", "torch": "?", "triton": "?"}
    head = f"device: {env['device']} | torch {env['torch']} | triton {env['triton']}"
    legend = (
        "latency = median ms of forward / forward+backward; saved = bytes autograd keeps "
        "for backward (eager/compiled/triton); skip/WRONG/error: see notes"
    )
    return "\n".join([head, legend, "", table(rows), "", *notes(rows)])
