"""PNG plots drawn from the CSV rows (matplotlib, Agg backend: no display needed).

* latency_vs_pixels.png: forward and forward+backward median latency vs feature-map
  pixels, log-log, one line per implementation (and dtype), p20-p80 band.
* speedup_named.png: speed-up over eager, and over the fastest PyTorch peer at that
  point (eager, compiled or the grid_sample backend), at the named Cityscapes
  configurations (plus any other size where a peer was timed, so a CPU run still
  shows one).
* memory_vs_pixels.png: bytes saved for backward vs pixels (and CUDA peak memory).
* bandwidth_vs_pixels.png (CUDA only): achieved fraction of the I/O floor bandwidth.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI machines and GPU boxes have no display
import matplotlib.pyplot as plt
import matplotlib.ticker
from matplotlib.patches import Patch

from .configs import KINDS, NAMED
from .records import as_float
from .summary import PYTORCH_PEERS

IMPL_STYLE = {
    "eager": {"color": "tab:blue", "marker": "o", "label": "eager reference"},
    "compiled": {"color": "tab:orange", "marker": "s", "label": "torch.compile(reference)"},
    "torch": {"color": "tab:red", "marker": "D", "label": "grid_sample (backend='torch')"},
    "triton": {"color": "tab:green", "marker": "^", "label": "Triton kernels"},
}
DTYPE_LINE = {"fp32": "-", "bf16": "--", "fp16": ":"}
SWEEP_CONFIGS = {"size", *NAMED.values()}  # rows on the size sweep (base point)
PHASES = (("fwd", "forward"), ("fwdbwd", "forward + backward"))
#: Speed-up baselines: label and the impls drawn against it.
BASELINES = {
    "eager": ("the eager reference", ("compiled", "torch", "triton")),
    "fastest": (
        "the fastest PyTorch peer at that point (eager, compiled or torch)",
        ("eager", "compiled", "torch", "triton"),
    ),
}


def _sweep_rows(rows: Iterable[dict[str, str]], kind: str) -> list[dict[str, str]]:
    return [r for r in rows if r["kind"] == kind and r["config"] in SWEEP_CONFIGS]


def _series(rows, kind: str, metric: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(impl, dtype) -> sorted [(pixels, value)] of ``metric`` on the size sweep."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in _sweep_rows(rows, kind):
        value = as_float(r) if r["metric"] == metric else None
        if value is not None:
            series[(r["impl"], r["dtype"])].append((int(r["map_h"]) * int(r["map_w"]), value))
    return {k: sorted(v) for k, v in series.items()}


def _title(rows: list[dict[str, str]], what: str) -> str:
    env = rows[0] if rows else {"device": "?", "torch": "?", "triton": "?"}
    return f"{what}\n{env['device']} | torch {env['torch']} | triton {env['triton']}"


def _missing_notes(rows) -> list[str]:
    """One line per impl and distinct reason why some of its points are missing."""
    lines: dict[str, None] = {}
    for r in rows:
        relevant = r["config"] in SWEEP_CONFIGS or r["config"] == "all"
        if relevant and r["metric"] in ("skipped", "error"):
            label = IMPL_STYLE.get(r["impl"], {}).get("label", "all")
            # Numbers differ per case; drop them so each reason is listed once.
            note = re.sub(
                r"(?<![\w.])\d+(\.\d+)?(?![\w.])", "#", r["note"].removeprefix("timing: ")
            )
            lines.setdefault(f"{label}: {note}")
    return list(lines)


def _footnote(fig, rows) -> None:
    """Why points are missing, under the plot (from the CSV's skip notes)."""
    notes = _missing_notes(rows)
    if notes:
        text = "Missing points (# = a number, see results.csv):\n" + "\n".join(notes[:8])
        fig.text(0.01, 0.005, text, fontsize=7, va="bottom", ha="left", color="0.3")


def _sweep_sizes(rows) -> list[tuple[int, int]]:
    sizes = {(int(r["map_h"]), int(r["map_w"])) for r in rows if r["config"] in SWEEP_CONFIGS}
    return sorted(sizes, key=lambda hw: hw[0] * hw[1])


def _pixel_axis(ax, sizes: list[tuple[int, int]]) -> None:
    """Log2 pixel axis ticked at the swept sizes, with the named configs marked."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if sizes:
        ticks = [h * w for h, w in sizes]
        ax.set_xticks(ticks, [f"{h}x{w}" for h, w in sizes], fontsize=7, rotation=30)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
        for (h, w), name in NAMED.items():
            if (h, w) in sizes:
                ax.axvline(h * w, color="0.6", ls=":", lw=0.8)
                ax.text(
                    h * w,
                    0.985,
                    name.removeprefix("cityscapes-"),
                    fontsize=6,
                    color="0.4",
                    ha="center",
                    va="top",
                    transform=ax.get_xaxis_transform(),
                )
    ax.set_xlabel("feature map H x W (x_low); dotted: Cityscapes 1024x2048 at stride s", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)


def latency_vs_pixels(rows: list[dict[str, str]], path: Path) -> None:
    """Median latency vs pixels, log-log, forward and forward+backward side by side."""
    sizes = _sweep_sizes(rows)
    fig, axes = plt.subplots(len(KINDS), 2, figsize=(12, 4.0 * len(KINDS) + 1.2), squeeze=False)
    for i, kind in enumerate(KINDS):
        for j, (phase, phase_label) in enumerate(PHASES):
            ax = axes[i][j]
            p50 = _series(rows, kind, f"{phase}_ms_p50")
            p20 = dict(_series(rows, kind, f"{phase}_ms_p20"))
            p80 = dict(_series(rows, kind, f"{phase}_ms_p80"))
            for (impl, dtype), points in sorted(p50.items()):
                style = IMPL_STYLE.get(impl, {})
                xs, ys = zip(*points, strict=True)
                lo = dict(p20.get((impl, dtype), []))
                hi = dict(p80.get((impl, dtype), []))
                yerr = [
                    [max(y - lo.get(x, y), 0) for x, y in points],
                    [max(hi.get(x, y) - y, 0) for x, y in points],
                ]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=yerr,
                    fmt=DTYPE_LINE.get(dtype, "-"),
                    capsize=3,
                    color=style.get("color"),
                    marker=style.get("marker"),
                    label=f"{style.get('label', impl)} {dtype}",
                )
            _pixel_axis(ax, sizes)
            ax.set_ylabel("latency (ms): median, p20-p80")
            ax.set_title(f"{kind}: {phase_label}", fontsize=10)
            if p50:
                ax.legend(fontsize=7, loc="best")
            else:
                ax.text(
                    0.5,
                    0.5,
                    "no timings on this device",
                    transform=ax.transAxes,
                    ha="center",
                    color="0.5",
                )
    fig.suptitle(_title(rows, "Latency vs feature-map size (B=2, dim=256, G=1, N=9)"))
    _footnote(fig, rows)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _speedups(rows, phase: str, baseline: str) -> dict[tuple[str, str, str, str], dict[str, float]]:
    """(kind, config, size, dtype) -> impl -> baseline median / impl median (size sweep).

    ``baseline`` is "eager" (the reference) or "fastest" (the fastest plain-PyTorch
    peer timed at that point: eager, compiled or torch).
    """
    medians: dict[tuple[str, str, str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["metric"] == f"{phase}_ms_p50" and r["config"] in SWEEP_CONFIGS:
            value = as_float(r)
            if value:
                key = (r["kind"], r["config"], f"{r['map_h']}x{r['map_w']}", r["dtype"])
                medians[key][r["impl"]] = value
    peers = BASELINES[baseline][1]
    speed = {}
    for key, m in medians.items():
        if baseline == "eager":
            base = m.get("eager")
        else:
            base = min((m[impl] for impl in PYTORCH_PEERS if impl in m), default=None)
        if base:
            speed[key] = {impl: base / v for impl, v in m.items() if impl in peers}
    return speed


def _speedup_entries(
    rows, phase: str, baseline: str
) -> tuple[list[tuple[str, dict[str, float]]], int]:
    """Bars to draw: every named config (timed or not), then other sizes with a peer timed.

    Returns (entries, number of named entries); an entry is (label, impl -> speed-up).
    """
    speed = _speedups(rows, phase, baseline)
    dtypes = sorted({r["dtype"] for r in rows if r["config"] in NAMED.values()}) or ["fp32"]
    entries: list[tuple[str, dict[str, float]]] = []
    for (h, w), name in sorted(NAMED.items(), key=lambda kv: kv[0][0] * kv[0][1]):
        for kind in KINDS:
            for dtype in dtypes:
                suffix = "" if dtype == "fp32" else f" {dtype}"
                values = speed.get((kind, name, f"{h}x{w}", dtype), {})
                entries.append((f"{kind}\n{name}\n{h}x{w}{suffix}", values))
    named = len(entries)
    for (kind, config, size, dtype), values in sorted(speed.items()):
        if config == "size" and values:
            entries.append((f"{kind}\n{size} {dtype}", values))
    return entries, named


def speedup_named(rows: list[dict[str, str]], path: Path) -> None:
    """Grouped bars of speed-up at the named configs (and other timed sizes): over the
    eager reference, and over the fastest PyTorch peer at each point."""
    panels = [(phase, baseline) for phase in PHASES for baseline in BASELINES]
    fig, axes = plt.subplots(len(panels), 1, figsize=(13, 4.6 * len(panels)), squeeze=False)
    for ax, ((phase, phase_label), baseline) in zip(axes[:, 0], panels, strict=True):
        baseline_label, peers = BASELINES[baseline]
        width = 0.8 / len(peers)
        entries, named = _speedup_entries(rows, phase, baseline)
        for i, (_, values) in enumerate(entries):
            if not values:
                ax.text(
                    i,
                    0.03,
                    "not timed on this device",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="0.5",
                    rotation=90,
                    transform=ax.get_xaxis_transform(),
                )
                continue
            for p, impl in enumerate(peers):
                if impl in values:
                    x = i + (p - (len(peers) - 1) / 2) * width
                    ax.bar(x, values[impl], width, color=IMPL_STYLE[impl]["color"])
                    ax.text(
                        x,
                        values[impl],
                        f"{values[impl]:.2g}x",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.axhline(1.0, color="k", lw=0.8)
        if named < len(entries):
            ax.axvline(named - 0.5, color="0.5", ls="--", lw=0.8)
            ax.text(
                named - 0.4,
                0.98,
                "other sizes timed on this device",
                fontsize=7,
                va="top",
                color="0.4",
                transform=ax.get_xaxis_transform(),
            )
        ax.set_xticks(range(len(entries)), [label for label, _ in entries], fontsize=7)
        ax.set_xlim(-0.6, len(entries) - 0.4)
        ax.set_ylim(0, max([1.5] + [v * 1.15 for _, vals in entries for v in vals.values()]))
        ax.set_ylabel(f"speed-up over {baseline} (x)")
        ax.set_title(
            f"{phase_label}: speed-up over {baseline_label} (higher is better)", fontsize=10
        )
        handles = [Patch(color=IMPL_STYLE[i]["color"], label=IMPL_STYLE[i]["label"]) for i in peers]
        ax.legend(handles=handles, fontsize=8, loc="upper left")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(_title(rows, "Speed-up at the Cityscapes configurations (dim 256, batch 2)"))
    _footnote(fig, rows)
    fig.tight_layout(rect=(0, 0.065, 1, 0.98))  # room for the footnote and the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory_vs_pixels(rows: list[dict[str, str]], path: Path) -> None:
    """Bytes saved for backward vs pixels per impl; CUDA peak memory dashed."""
    sizes = _sweep_sizes(rows)
    fig, axes = plt.subplots(1, len(KINDS), figsize=(6 * len(KINDS), 5.2), squeeze=False)
    for ax, kind in zip(axes[0], KINDS, strict=True):
        # Drawn first and wide, so a line lying on it (Triton saves little more) stays visible.
        for (_, dtype), points in _series(rows, kind, "floor_fwd_bytes").items():
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                [y / 2**20 for y in ys],
                "-",
                color="0.7",
                lw=5,
                alpha=0.6,
                label=f"op inputs + output ({dtype})",
            )
        for metric, line, suffix in (
            ("saved_bytes", "-", "saved for backward"),
            ("peak_fwdbwd_bytes", "--", "CUDA peak, fwd+bwd"),
        ):
            for (impl, dtype), points in sorted(_series(rows, kind, metric).items()):
                style = IMPL_STYLE.get(impl, {})
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    [y / 2**20 for y in ys],
                    line,
                    color=style.get("color"),
                    marker=style.get("marker"),
                    label=f"{style.get('label', impl)} {dtype}: {suffix}",
                )
        _pixel_axis(ax, sizes)
        ax.set_ylabel("MiB")
        ax.set_title(kind, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(_title(rows, "Memory vs feature-map size (B=2, dim=256, G=1, N=9)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bandwidth_vs_pixels(rows: list[dict[str, str]], path: Path) -> bool:
    """Fraction of the I/O-floor bandwidth vs pixels (CUDA only). False if no data."""
    kinds = [k for k in KINDS if k != "module"]
    if not any(r["metric"].startswith("bw_frac_") for r in rows):
        return False
    sizes = _sweep_sizes(rows)
    fig, axes = plt.subplots(len(kinds), 2, figsize=(12, 4.2 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, (phase, phase_label) in enumerate(PHASES):
            ax = axes[i][j]
            for (impl, dtype), points in sorted(_series(rows, kind, f"bw_frac_{phase}").items()):
                style = IMPL_STYLE.get(impl, {})
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    ys,
                    DTYPE_LINE.get(dtype, "-"),
                    color=style.get("color"),
                    marker=style.get("marker"),
                    label=f"{style.get('label', impl)} {dtype}",
                )
            _pixel_axis(ax, sizes)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_ylabel("floor bytes / time / copy bandwidth")
            ax.set_title(f"{kind}: {phase_label}", fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(_title(rows, "Fraction of the I/O-floor bandwidth achieved (1.0 = copy speed)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw_all(rows: list[dict[str, str]], out_dir: Path) -> list[Path]:
    """Every plot the rows support; returns the files written."""
    written = []
    for name, draw in (
        ("latency_vs_pixels.png", latency_vs_pixels),
        ("speedup_named.png", speedup_named),
        ("memory_vs_pixels.png", memory_vs_pixels),
    ):
        draw(rows, out_dir / name)
        written.append(out_dir / name)
    if bandwidth_vs_pixels(rows, out_dir / "bandwidth_vs_pixels.png"):
        written.append(out_dir / "bandwidth_vs_pixels.png")
    return written
