"""``python -m ddsm_triton.bench``: benchmark the Triton kernels against the reference.

Compares, for the core op at spatial- and channel-branch shapes and for the whole
DDSM module: the Triton kernels, the eager PyTorch reference and torch.compile of
the reference. Measures forward and forward+backward latency, bytes saved for
backward (exact, via saved_tensors_hooks; FakeTensorMode makes every size cheap),
and on CUDA peak memory and the fraction of the I/O-floor bandwidth achieved.

Writes to ``--out`` (default ``bench/results/<device>/``): results.csv (every
measurement), summary.md, kernel_report.json and PNG plots. See ``--help``.
``--gpu`` is the budgeted profile of ``make gpu-check`` (bench/gpu_profile.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import sys
import time
from pathlib import Path

import torch

from . import kernel_stats, plots, summary, traffic
from .configs import HALF_DTYPES, build_plan
from .progress import Progress
from .records import Recorder, read_csv
from .runner import Runner, Settings

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ddsm_triton.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="a few minutes on 2 CPU cores (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="the whole sweep; torch.compile at every size",
    )
    mode.add_argument(
        "--tiny",
        dest="mode",
        action="store_const",
        const="tiny",
        help="toy shapes, seconds; for tests",
    )
    mode.add_argument(
        "--gpu",
        dest="mode",
        action="store_const",
        const="gpu",
        help="the GPU profile: named Cityscapes points within --budget-s (make gpu-check)",
    )
    p.set_defaults(mode="quick")
    gpu = p.add_argument_group("GPU profile (--gpu)")
    gpu.add_argument(
        "--budget-s",
        type=float,
        default=240.0,
        metavar="S",
        help="stop starting cases so that the profile ends within S seconds (default 240)",
    )
    gpu.add_argument(
        "--dry-run",
        action="store_true",
        help="toy shapes, on CPU unless --device cuda: checks the profile's plumbing",
    )
    p.add_argument("--out", type=Path, help="output directory (default bench/results/<device>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile peer"
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled peer (default inductor)",
    )
    p.add_argument(
        "--cpu-call-budget",
        type=float,
        default=None,
        metavar="S",
        help="CPU: time only cases whose eager fwd+bwd is estimated under S seconds "
        "(default 4 quick, 30 full)",
    )
    p.add_argument(
        "--arch",
        type=int,
        default=None,
        help="kernel report target, e.g. 90 (default: this GPU, else 90)",
    )
    p.add_argument("--no-kernel-report", dest="kernel_report", action="store_false")
    p.add_argument(
        "--no-parity",
        dest="parity",
        action="store_false",
        help="skip the tiny Triton-vs-eager parity cases",
    )
    p.add_argument(
        "--replot",
        action="store_true",
        help="redraw plots and summary from <out>/results.csv without measuring",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """Human-readable name of the device that produced the numbers."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model
            )
    except OSError:
        pass
    return f"CPU {model} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """Directory name for results: 'cpu', or the GPU name ('nvidia-h100-80gb-hbm3')."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception:
        return "unavailable"


def default_arch(device: torch.device) -> int:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return 90  # H100: the kernel report needs no GPU to target it


def settings_for(args: argparse.Namespace, device: torch.device) -> Settings:
    # Per mode: (seconds one eager fwd+bwd may take, seconds per timed metric, min calls).
    mode = "tiny" if args.mode == "gpu" and args.dry_run else args.mode
    call_budget, metric_budget, min_reps = {
        "tiny": (4.0, 0.02, 2),
        "quick": (4.0, 1.0, 3),
        "full": (30.0, 5.0, 5),
        "gpu": (4.0, 1.0, 3),
    }[mode]
    if args.cpu_call_budget is not None:
        call_budget = args.cpu_call_budget
    return Settings(
        mode=args.mode,
        device=device,
        compile=args.compile,
        compile_backend=args.compile_backend,
        cpu_call_budget_s=call_budget,
        cpu_metric_budget_s=metric_budget,
        min_reps=min_reps,
        parity=args.parity and args.mode != "gpu",  # the CUDA tier checks parity there
    )


def run(args: argparse.Namespace) -> Path:
    """Measure everything, write the output directory, print the summary; return it."""
    device = pick_device(args.device)
    if device.type == "cpu" and "TRITON_INTERPRET" not in os.environ:
        # Without a GPU the kernels can only run in the interpreter, which must be
        # switched on before ddsm_triton.kernels is imported (nothing has yet).
        os.environ["TRITON_INTERPRET"] = "1"
    out = args.out or RESULTS_ROOT / device_slug(device)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    recorder = Recorder(device_name(device), torch.__version__, triton_version())
    _record_device_limits(recorder, device, args.mode)
    if args.mode == "gpu":
        _run_gpu_profile(args, device, recorder, out, start)
        return out
    plan = build_plan(args.mode, cuda=device.type == "cuda")
    steps = len(plan.cases) + (3 if args.parity else 0) + 2 * int(args.kernel_report)
    progress = Progress(steps, enabled=not args.quiet)
    try:
        Runner(settings_for(args, device), recorder, progress).run(plan)
        if args.kernel_report:
            progress.status("kernel report: compiling every kernel for a GPU target")
            _kernel_report(args, device, recorder, out)
            progress.advance("kernel report")
            progress.status("traffic meter: kernel bytes per cell, under the interpreter")
            traffic.bench_hook(out, max_rows=None if args.mode == "full" else 1)
            progress.advance("traffic meter")
    finally:
        progress.close()
        wall = time.perf_counter() - start
        recorder.add(None, "all", "wall_s", wall, f"whole run, --{args.mode}", config="run")
        recorder.write(out / "results.csv")
    _finish(recorder.rows, out)
    return out


def _run_gpu_profile(
    args: argparse.Namespace, device: torch.device, recorder: Recorder, out: Path, start: float
) -> None:
    """``--gpu``: the budgeted profile (bench/gpu_profile.py), then plots and summary.
    SIGTERM (a time limit) still writes the CSV, the plots and the summary."""
    from . import gpu_profile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through finally
    try:
        gpu_profile.run(
            settings_for(args, device),
            recorder,
            out,
            budget_s=args.budget_s,
            dry_run=args.dry_run,
            quiet=args.quiet,
        )
    finally:
        wall = time.perf_counter() - start
        recorder.add(None, "all", "wall_s", wall, "whole run, --gpu", config="run")
        recorder.write(out / "results.csv")
        _finish(recorder.rows, out)
    print(f"GPU profile: {wall:.0f} s in all", flush=True)


def _record_device_limits(recorder: Recorder, device: torch.device, mode: str) -> None:
    """Say in the CSV (and on stderr) what this device cannot measure."""
    if device.type != "cuda" and mode == "gpu":
        note = "GPU profile on CPU: a dry run of its plumbing; Triton is interpreted, not timed"
        recorder.add(None, "all", "info", note=note, config="all")
    elif device.type != "cuda":
        _record_cpu_limits(recorder)
    elif os.environ.get("TRITON_INTERPRET") == "1":
        # The interpreter would run the kernels on the host: every Triton number wrong.
        note = "TRITON_INTERPRET=1 on a CUDA machine: Triton timings are interpreter timings"
        print(f"warning: {note}; unset it to benchmark the compiled kernels", file=sys.stderr)
        recorder.add(None, "triton", "info", note=note, config="all")


def _record_cpu_limits(recorder: Recorder) -> None:
    """Say in the CSV what a CPU-only run cannot measure."""
    for impl, note in (
        ("all", f"{' and '.join(HALF_DTYPES)} sweeps: CUDA only"),
        ("all", "peak memory and bandwidth-floor fractions: CUDA only"),
    ):
        recorder.add(None, impl, "skipped", note=note, config="all")


def _kernel_report(args, device: torch.device, recorder: Recorder, out: Path) -> None:
    """Write kernel_report.json and its CSV rows, or say in the CSV why there is none."""
    arch = args.arch or default_arch(device)
    path = out / "kernel_report.json"
    entries, message = kernel_stats.collect_cached(arch, path)
    kernel_stats.write(entries, message, arch, path)
    if entries:
        kernel_stats.record(entries, recorder)
        recorder.add(None, "triton", "info", note=f"kernel report: {message}", config="kernels")
    else:
        recorder.add(None, "triton", "skipped", note=f"kernel report: {message}", config="kernels")


def _finish(rows: list[dict[str, str]], out: Path) -> None:
    """Plots and summary from the rows (also what --replot runs)."""
    written = plots.draw_all(rows, out)
    text = summary.render(rows)
    (out / "summary.md").write_text("```\n" + text + "\n```\n")
    print(text)
    print(f"\nwrote {out / 'results.csv'}, summary.md, " + ", ".join(p.name for p in written))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        out = args.out or RESULTS_ROOT / device_slug(pick_device(args.device))
        _finish(read_csv(out / "results.csv"), out)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
