"""The compact end-of-run summary, built from the CSV rows alone."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from .records import as_float

IMPLS = ("eager", "compiled", "torch", "triton")
#: The plain-PyTorch implementations: a speed-up is quoted against the fastest of them.
PYTORCH_PEERS = ("eager", "compiled", "torch")
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


def _case_columns(key: tuple) -> str:
    kind, config, batch, h, w, dim, groups, samples, dtype = key
    return (
        f"{kind:<10} {config:<14} {h + 'x' + w:>7} {batch:>1} {dim:>3} {groups:>1} "
        f"{samples:>2} {dtype:<4}"
    )


CASE_HEADER = (
    f"{'kind':<10} {'config':<14} {'map':>7} {'B':>1} {'dim':>3} {'G':>1} {'N':>2} {'dtype':<4}"
)


def table(rows: list[dict[str, str]]) -> str:
    """One line per case: latency per impl (ms, median) and saved-for-backward MiB."""
    header = (
        f"{CASE_HEADER} | {'eager fwd/f+b':>15} | {'compiled fwd/f+b':>16} | "
        f"{'torch fwd/f+b':>15} | {'triton fwd/f+b':>15} | {'saved MiB e/c/g/t':>18}"
    )
    lines = [header, "-" * len(header)]
    for key, metrics in _cases(rows).items():
        saved = "/".join(_mib(metrics, impl) for impl in IMPLS)
        lines.append(
            f"{_case_columns(key)} | {_latency(metrics, 'eager'):>15} | "
            f"{_latency(metrics, 'compiled'):>16} | {_latency(metrics, 'torch'):>15} | "
            f"{_latency(metrics, 'triton'):>15} | {saved:>18}"
        )
    return "\n".join(lines)


def _median(metrics: dict, impl: str, phase: str) -> float | None:
    row = metrics.get((impl, f"{phase}_ms_p50"))
    return as_float(row) if row else None


def fastest_pytorch_peer(metrics: dict, phase: str) -> tuple[str, float] | None:
    """(impl, median ms) of the fastest plain-PyTorch impl timed for ``phase``, or None."""
    timed = [(t, impl) for impl in PYTORCH_PEERS if (t := _median(metrics, impl, phase))]
    if not timed:
        return None
    ms, impl = min(timed)
    return impl, ms


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "-"


def speedup_table(rows: list[dict[str, str]]) -> str:
    """Per case: torch (grid_sample) over eager, and every impl against the fastest
    PyTorch peer at that point (eager, compiled or torch), forward / forward+backward."""
    header = (
        f"{CASE_HEADER} | {'torch/eager fwd, f+b':>20} | {'fastest PyTorch fwd, f+b':>24} | "
        + " | ".join(f"{impl + ' vs fastest':>19}" for impl in IMPLS)
    )
    lines = [header, "-" * len(header)]
    for key, metrics in _cases(rows).items():
        ratio = [
            _ratio(_median(metrics, "eager", p), _median(metrics, "torch", p))
            for p in ("fwd", "fwdbwd")
        ]
        fastest = [fastest_pytorch_peer(metrics, p) for p in ("fwd", "fwdbwd")]
        names = ", ".join(f[0] if f else "-" for f in fastest)
        versus = [
            ", ".join(
                _ratio(f[1] if f else None, _median(metrics, impl, p))
                for f, p in zip(fastest, ("fwd", "fwdbwd"), strict=True)
            )
            for impl in IMPLS
        ]
        if all(v == "-, -" for v in versus):
            continue  # nothing timed at this point
        lines.append(
            f"{_case_columns(key)} | {', '.join(ratio):>20} | {names:>24} | "
            + " | ".join(f"{v:>19}" for v in versus)
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
        "latency = median ms of forward / forward+backward; torch = the F.grid_sample "
        "backend; saved = bytes autograd keeps for backward (eager/compiled/grid_sample "
        "torch/triton); skip/WRONG/error: see notes"
    )
    speed_legend = (
        "speed-ups, forward, forward+backward: torch/eager = eager time / torch time; "
        "X vs fastest = time of the fastest PyTorch peer (eager, compiled, torch) / time of X"
    )
    return "\n".join(
        [head, legend, "", table(rows), "", speed_legend, "", speedup_table(rows), "", *notes(rows)]
    )
