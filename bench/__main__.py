"""``python -m ddsm_triton.bench``: every backend of the DDSM op and module checked against
the reference, then timed, and the bytes each saves for backward, into ``--out``
(bench/results/<device>/): results.csv, summary.md, the plots; on CPU the kernel report and
traffic meter; with ``--gpu`` (make gpu-check) profile.txt and autotune.txt. See
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from . import kernel_report, report, traffic
from .cases import KINDS, build, plan
from .measure import Budget, Run
from .records import Recorder, results_dir

#: mode: (s for all timings, s a forward+backward may take, s to time a phase on CPU, help)
MODES = {
    "quick": (150, 2.5, 0.3, "a few minutes on 2 CPU cores (default)"),
    "full": (3600, 30, 1.0, "the whole sweep; compiles at every size"),
    "tiny": (300, 4, 0.05, "toy shapes, seconds; for tests"),
    "gpu": (170, 60, 0.3, "the GPU profile of make gpu-check"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m ddsm_triton.bench", description=__doc__)
    for mode, (*_, text) in MODES.items():
        p.add_argument(f"--{mode}", dest="mode", action="store_const", const=mode, help=text)
    p.set_defaults(mode="quick")
    p.add_argument("--dry-run", action="store_true", help="--gpu's structure, toy maps, CPU")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<device>)")
    p.add_argument("--budget-s", type=float, help="seconds for all timings (default: per mode)")
    p.add_argument("--call-s", type=float, help="time no call predicted longer (per mode)")
    p.add_argument("--compiler", default="inductor", help="torch.compile's backend")
    p.add_argument("--no-static", dest="static", action="store_false", help="no kernel report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda:  # before the kernels are imported: on CPU they run only interpreted
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    warnings.filterwarnings("ignore", ".*does not have a deterministic implementation")
    import triton

    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    (out := args.out or results_dir(name if cuda else "cpu")).mkdir(parents=True, exist_ok=True)
    mode = "gpu-dry-run" if args.mode == "gpu" and args.dry_run else args.mode
    total_s, call_s, min_run_time, _ = MODES[args.mode]
    budget = Budget(args.budget_s or total_s, args.call_s or call_s)
    rec = Recorder(name, torch.__version__, triton.__version__)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a time limit still writes
    start = time.perf_counter()
    try:
        run, cases = Run(rec, device, budget, args.compiler, min_run_time), plan(mode, cuda=cuda)
        for case, backends in tqdm(cases, "bench", disable=args.quiet, dynamic_ncols=True):
            run.case(case, backends)
            rec.write(out / "results.csv")  # a run stopped at its limit keeps what it did
        if mode.startswith("gpu"):
            profile_table([c for c, _ in cases], device, out)
            (out / "autotune.txt").write_text(autotune_choices())
        elif args.static:  # the sm_90 kernel report, the traffic meter
            kernel_report.bench_hook(out, rec)
            traffic.bench_hook(out, max_rows=None if mode == "full" else 1)
    finally:
        rec.add(None, "all", "wall_s", time.perf_counter() - start, f"--{mode}", config="run")
        rec.write(out / "results.csv")
        print(report.write(rec.frame(), out))
    return 0


def profile_table(cases: list, device: torch.device, out: Path) -> None:
    """profile.txt: torch.profiler's table of 3 forward+backward per kind at the largest
    point (Triton on a GPU; on CPU the reference: interpreted kernels mean nothing)."""
    from torch.profiler import ProfilerActivity, profile

    cuda, tables = device.type == "cuda", []
    backend, sort = ("triton", "self_device") if cuda else ("reference", "self_cpu")
    top = cases.index(max(cases, key=lambda c: c.map_h * c.map_w))  # a size's kinds follow
    for case in cases[top : top + len(KINDS)]:
        (wl := build(case, backend, device)).fwdbwd()  # compiles, autotunes
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            for _ in range(3):
                wl.fwdbwd()
            torch.cuda.synchronize() if cuda else None
        table = prof.key_averages().table(sort_by=f"{sort}_time_total", row_limit=15)
        where = f"{case.kind} {case.map_h}x{case.map_w} {case.dtype}"
        tables.append(f"{backend}, {where}, 3 x forward+backward\n{table}")
        (out / "profile.txt").write_text("\n\n".join(tables))


def autotune_choices() -> str:
    """Each autotuned kernel's chosen configuration, per autotuning key seen here."""
    from triton.runtime.autotuner import Autotuner

    lines = [
        f"{module}.{attr} {key}: {config}"
        for module, m in sorted(sys.modules.items())
        if module.startswith("ddsm_triton.kernels") and m is not None
        for attr, kernel in vars(m).items()
        if isinstance(kernel, Autotuner)
        for key, config in kernel.cache.items()
    ]
    return "\n".join(lines) + "\n" if lines else "no autotuner chose a configuration here\n"


if __name__ == "__main__":
    sys.exit(main())
