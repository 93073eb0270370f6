"""summary.md and the plots, from results.csv's rows alone: latency_vs_pixels.png,
speedup_named.png (over the fastest PyTorch backend, at the named Cityscapes points),
memory_vs_pixels.png (saved for backward; GPU: and peak) and, on a GPU,
bandwidth_vs_pixels.png (the op's I/O floor over its median time)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines or GPU boxes
import matplotlib.pyplot as plt
import pandas as pd

from .cases import KINDS, NAMED, PYTORCH

CASE = ["kind", "config", "map", "batch", "dim", "groups", "samples", "dtype"]
ORDER = ("reference", "reference+compile", "torch", "triton", "triton+deterministic")
PHASES = {"fwd": "forward", "fwdbwd": "forward + backward"}
DASH = {"bf16": "--", "fp16": ":"}


def _cases(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that belong to a benchmark case, with 'map' (HxW) and 'pixels' added."""
    df = frame[frame["kind"].notna() & (frame["config"] != "parity")].copy()
    ints = ["batch", "dim", "groups", "samples", "map_h", "map_w"]
    df[ints] = df[ints].astype(int)
    df["map"] = df.map_h.astype(str) + "x" + df.map_w.astype(str)
    df["pixels"] = df.map_h * df.map_w
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df


def _pivot(df: pd.DataFrame, metric: str, index=CASE) -> pd.DataFrame:
    """Cases x backends of ``metric``, backends in ORDER."""
    t = df[df.metric == metric].pivot_table("value", index, "backend", sort=False)
    return t[[b for b in ORDER if b in t]]


def speedups(df: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Per case: the fastest PyTorch backend's time (it is named in 'fastest') over each's."""
    t = _pivot(df, f"{phase}_ms")
    pytorch = t[[b for b in PYTORCH if b in t]].dropna(how="all")
    out = t.loc[pytorch.index].rdiv(pytorch.min(axis=1), axis=0)
    out.insert(0, "fastest", pytorch.idxmin(axis=1))
    return out


def _fmt(x) -> str:
    return x if isinstance(x, str) else "-" if pd.isna(x) else f"{x:.3g}"


def _pair(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """Two tables of the same shape as one, 'a / b' per cell."""
    a, b = a.align(b)
    return (a.map(_fmt) + " / " + b.map(_fmt)).to_string()


def summary(frame: pd.DataFrame) -> str:
    """The tables (latency, speed-ups, memory, on a GPU bandwidth) and the notes."""
    df, env = _cases(frame), frame.iloc[0]
    mib = _pivot(df, "saved_bytes") / 2**20
    parts = [
        f"device: {env.device} | torch {env.torch} | triton {env.triton}",
        "Latency, median ms, forward / forward+backward:",
        _pair(_pivot(df, "fwd_ms"), _pivot(df, "fwdbwd_ms")),
        "Speed-up over the fastest PyTorch backend at that point (named in 'fastest'), "
        "forward / forward+backward:",
        _pair(speedups(df, "fwd"), speedups(df, "fwdbwd")),
        "Saved for backward, MiB (FakeTensorMode; compile: a real run):",
        mib.map(_fmt).to_string(),
    ]
    if (df.metric == "fwd_gbps").any():
        parts += ["Bandwidth, GB/s of the I/O floor, forward / forward+backward:"]
        parts += [_pair(_pivot(df, "fwd_gbps"), _pivot(df, "fwdbwd_gbps"))]
    return "\n\n".join([*parts, "Notes:", "\n".join(notes(frame))])


def notes(frame: pd.DataFrame) -> list[str]:
    """Parity, compile times, facts; checks counted; each reason for a skip, with a count."""
    parity = (frame.metric == "check_err") & (frame.config == "parity")
    facts = frame[parity | frame.metric.isin(["compile_s", "copy_gbps", "info", "wall_s"])]
    facts = facts.assign(value=pd.to_numeric(facts.value).map(_fmt))
    rows = facts[["metric", "backend", "kind", "value", "note"]].fillna("").itertuples(index=False)
    lines = [" ".join(v for v in row if v not in ("", "-")) for row in rows]
    checks = frame[(frame.metric == "check_err") & ~parity]
    ok = checks.note.str.startswith("ok").sum()
    lines.append(f"check_err: {ok} of {len(checks)} backends matched the reference before timing")
    diff = pd.to_numeric(frame[frame.metric == "fake_minus_real_bytes"].value)
    lines.append(f"saved bytes: FakeTensorMode = a real run in {(diff == 0).sum()} of {len(diff)}")
    why = frame[frame.metric.isin(["skipped", "error"])]
    masked = why.note.str.replace(r"\d+(\.\d+)?", "#", regex=True)  # each reason once
    counts = (why.backend + " " + why.metric + ": " + masked).value_counts(sort=False)
    lines += [f"{n} x {reason}" for reason, n in counts.items()]
    return lines


def _lines(df: pd.DataFrame, metrics: dict[str, str], ylabel: str, scale: float = 1.0):
    """Log-log: a row per metric, a column per kind, a line per backend and dtype."""
    metrics = {m: t for m, t in metrics.items() if (df.metric == m).any()}
    kinds = [k for k in KINDS if (df.kind == k).any()]
    size = (5 * len(kinds), 4 * len(metrics))
    fig, axes = plt.subplots(len(metrics), len(kinds), figsize=size, squeeze=False)
    for row, (metric, title) in zip(axes, metrics.items(), strict=True):
        for ax, kind in zip(row, kinds, strict=True):
            t = _pivot(df[df.kind == kind], metric, ["dtype", "pixels"]).sort_index()
            for dtype in t.index.unique("dtype"):
                for backend, s in t.loc[dtype].items():  # a Series plots against its index
                    style = {"color": f"C{ORDER.index(backend)}", "ls": DASH.get(dtype, "-")}
                    ax.plot(s.dropna() * scale, marker="o", label=f"{backend} {dtype}", **style)
            ax.set(xscale="log", yscale="log", title=f"{kind}: {title}", ylabel=ylabel)
            ax.set_xlabel("pixels of x_low")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _speedup_bars(df: pd.DataFrame):
    """Bars: each backend's speed-up over the fastest PyTorch backend, per named point."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), squeeze=False)
    for ax, phase in zip(axes[0], PHASES, strict=True):
        s = speedups(df, phase).drop(columns="fastest").reset_index()
        s = s[s.config.isin(NAMED.values())]
        s.index = s.kind + " " + s.config + " " + s["map"] + " " + s.dtype
        s = s[[b for b in ORDER if b in s]].dropna(how="all")
        if not s.empty:
            s.plot.bar(ax=ax, rot=20, fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(title=PHASES[phase], ylabel="x the fastest PyTorch backend (higher is better)")
    fig.tight_layout()
    return fig


def figures(frame: pd.DataFrame) -> dict[str, plt.Figure]:
    """name -> figure, drawn from the CSV rows of the size sweep and named points."""
    df = _cases(frame)
    sweep = df[df.config.isin(("size", *NAMED.values()))]  # the size sweep
    times = {f"{p}_ms": t for p, t in PHASES.items()}
    memory = {"saved_bytes": "saved for backward", "peak_fwdbwd_bytes": "peak, fwd+bwd"}
    figs = {
        "latency_vs_pixels": _lines(sweep, times, "median ms"),
        "speedup_named": _speedup_bars(df),
        "memory_vs_pixels": _lines(sweep, memory, "MiB", 2**-20),
    }
    if (df.metric == "fwd_gbps").any():
        gbps = {f"{p}_gbps": t for p, t in PHASES.items()}
        fig = figs["bandwidth_vs_pixels"] = _lines(sweep[sweep.kind != "module"], gbps, "GB/s")
        for ax, copy in itertools.product(fig.axes, frame.value[frame.metric == "copy_gbps"]):
            ax.axhline(float(copy), color="k", ls="--", lw=0.8, label="copy bandwidth")
    return figs


def write(frame: pd.DataFrame, out: Path) -> str:
    """summary.md and the PNGs into ``out``; returns the summary."""
    text = summary(frame)
    (out / "summary.md").write_text("```\n" + text + "\n```\n")
    for name, fig in figures(frame).items():
        fig.savefig(out / f"{name}.png", dpi=80)
        plt.close(fig)
    return text
