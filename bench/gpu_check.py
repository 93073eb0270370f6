"""``make gpu-check`` (``python -m ddsm_triton.bench.gpu_check``): prove and measure the
library on a GPU machine in one command, everything into one folder.

Steps, each with its own time limit so that the whole run ends within ``--total-s``:

1. ``versions.json`` and ``nvidia-smi.txt``: what the machine is;
2. the CUDA tier, ``pytest -m cuda`` (compiled kernels at real sizes), log in
   ``pytest_cuda.log``;
3. the GPU benchmark profile, ``python -m ddsm_triton.bench --gpu`` (results.csv,
   summary.md, plots, kernels.md, autotune_configs.json), log in ``bench.log``;
4. ``gpu_check.md``: each step's outcome and time, and the total.

It creates no environment, pins nothing and reaches no registry: it uses the Python that
runs it. Output is streamed with flush and every file is written as soon as it exists, so
a run killed at its limit still leaves what it did. The Triton interpreter is never used
on a GPU (``TRITON_INTERPRET`` is removed from the children's environment).

``--dry-run`` runs the same steps on CPU with toy shapes (the tier under
``DDSM_CUDA_DRY_RUN=1``, the profile with ``--dry-run``): a check of the plumbing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout (editable install)
RESULTS_ROOT = REPO / "bench" / "results"
#: Seconds the CUDA tier may take before it is stopped (its budget is ~180 s on an H100).
TESTS_LIMIT_S = 240.0
#: Seconds the benchmark profile aims for (it budgets itself), and how far past that it
#: may run before it is sent SIGTERM; KILL_GRACE_S later, SIGKILL.
BENCH_BUDGET_S = 230.0
BENCH_OVERRUN_S = 10.0
KILL_GRACE_S = 20.0
#: Whole run (make's editable install, ~10 s, comes on top): stays under 8 minutes even
#: when every step runs to its limit.
TOTAL_S = 450.0


@dataclass
class Step:
    """One finished step: its name, exit status (None: not run) and seconds."""

    name: str
    status: int | None
    seconds: float
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.status is None:
            return "not run"
        return "ok" if self.status == 0 else f"exit {self.status}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ddsm_triton.bench.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<card>)")
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, toy shapes: check the plumbing only"
    )
    p.add_argument(
        "--total-s", type=float, default=TOTAL_S, help=f"whole run, seconds ({TOTAL_S:.0f})"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="pytest-xdist workers for the CUDA tier (default: 4 if xdist is installed, "
        "on a GPU; 0 = in one process)",
    )
    p.add_argument("--skip-tests", action="store_true", help="no CUDA tier")
    p.add_argument("--skip-bench", action="store_true", help="no benchmark profile")
    p.add_argument(
        "--bench-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the profile, e.g. --bench-arg=--no-compile (repeatable)",
    )
    return p.parse_args(argv)


# ------------------------------------------------------------------ environment
def card_slug() -> str:
    """The results folder's name: the GPU's name ('nvidia-h100-80gb-hbm3'), or 'cpu'."""
    import torch

    from .__main__ import device_slug  # the bench's own folder naming

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device_slug(device)


def _command_output(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not found on PATH"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{' '.join(cmd)}: {err}"
    return done.stdout + done.stderr


def versions() -> dict:
    """Python, packages, GPU and driver: what produced the numbers."""
    import torch

    info: dict = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "git_commit": _command_output(["git", "-C", str(REPO), "rev-parse", "HEAD"]).strip(),
    }
    for name in ("triton", "numpy", "matplotlib", "pytest", "hypothesis", "xdist"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "installed")
        except Exception as err:
            info[name] = f"unavailable ({type(err).__name__})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        }
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = _command_output(smi).strip()
    return info


def write_environment(out: Path) -> None:
    (out / "versions.json").write_text(json.dumps(versions(), indent=1) + "\n")
    (out / "nvidia-smi.txt").write_text(_command_output(["nvidia-smi"]))


# ------------------------------------------------------------------ child processes
def _child_env(dry_run: bool) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # never interpret on the device
    env.pop("DDSM_CUDA_DRY_RUN", None)
    if dry_run:
        env["DDSM_CUDA_DRY_RUN"] = "1"
    return env


def _pump(stream, log, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(prefix + line)
        sys.stdout.flush()
        log.write(line)
        log.flush()


def run_logged(cmd: list[str], log_path: Path, limit_s: float, env: dict[str, str]) -> int:
    """Run ``cmd`` in its own process group, streaming its output to stdout and to
    ``log_path`` line by line; SIGTERM at ``limit_s``, SIGKILL KILL_GRACE_S later.
    Returns its exit status (124 when stopped at the limit, as ``timeout`` does)."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=os.setpgrp,  # its own group, to stop it with its workers
        )
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, "  "), daemon=True)
        pump.start()
        status = None
        try:
            status = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            print(f"  ... stopped at its {limit_s:.0f} s limit", flush=True)
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            status = 124
        finally:
            if proc.poll() is None:  # interrupted: leave nothing running
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # stray workers of a finished child
            pump.join(timeout=5)
        log.write(f"\n[exit status {status}]\n")
    return status


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(proc.pid, sig)


def tests_command(workers: int | None, dry_run: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-rs", "-p", "no:cacheprovider"]
    cmd += ["--durations=15", "tests"]
    if workers is None:
        has_xdist = importlib.util.find_spec("xdist") is not None
        workers = 4 if has_xdist and not dry_run else 0
    if workers > 0:
        cmd += ["-n", str(workers)]
    return cmd


def bench_command(out: Path, budget_s: float, dry_run: bool, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "ddsm_triton.bench", "--gpu", "--out", str(out)]
    cmd += ["--budget-s", f"{budget_s:.0f}"]
    if dry_run:
        # A CPU inductor compile takes minutes; the plumbing is the same with "eager".
        cmd += ["--dry-run", "--device", "cpu", "--compile-backend", "eager"]
    return cmd + extra


# ------------------------------------------------------------------ the run
def write_report(out: Path, steps: list[Step], total: float, dry_run: bool) -> None:
    lines = [
        "# make gpu-check" + (" (dry run on CPU, toy shapes)" if dry_run else ""),
        "",
        "| step | result | seconds | note |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {s.name} | {s.verdict} | {s.seconds:.0f} | {s.note} |" for s in steps]
    lines += ["", f"Total: {total:.0f} s.", ""]
    (out / "gpu_check.md").write_text("\n".join(lines))


def _tests_note(log: Path) -> str:
    """pytest's final summary line ('12 passed, 1 failed in 95.1s')."""
    try:
        lines = [ln.strip(" =") for ln in log.read_text().splitlines() if " in " in ln]
    except OSError:
        return ""
    finals = [ln for ln in lines if any(w in ln for w in ("passed", "failed", "error", "skip"))]
    return finals[-1] if finals else "no summary line (stopped?)"


TESTS_STEP = "CUDA tier (pytest -m cuda)"
BENCH_STEP = "benchmark profile (--gpu)"


def run_tests(args: argparse.Namespace, out: Path, deadline: float, env: dict) -> Step:
    """The CUDA tier, stopped at TESTS_LIMIT_S (or earlier, to leave the profile a minute)."""
    if args.skip_tests:
        return Step(TESTS_STEP, None, 0.0, "--skip-tests")
    print(f"gpu-check: {TESTS_STEP}", flush=True)
    start = time.perf_counter()
    limit = min(TESTS_LIMIT_S, deadline - start - 60.0)
    log = out / "pytest_cuda.log"
    status = run_logged(tests_command(args.workers, args.dry_run), log, limit, env)
    return Step(TESTS_STEP, status, time.perf_counter() - start, _tests_note(log))


def run_bench(args: argparse.Namespace, out: Path, deadline: float, env: dict) -> Step:
    """The GPU profile, with a budget that ends it by the deadline."""
    if args.skip_bench:
        return Step(BENCH_STEP, None, 0.0, "--skip-bench")
    print(f"gpu-check: {BENCH_STEP}", flush=True)
    start = time.perf_counter()
    left = deadline - start - BENCH_OVERRUN_S - KILL_GRACE_S
    budget = max(30.0, min(BENCH_BUDGET_S, left))
    cmd = bench_command(out, budget, args.dry_run, args.bench_arg)
    status = run_logged(cmd, out / "bench.log", budget + BENCH_OVERRUN_S, env)
    return Step(BENCH_STEP, status, time.perf_counter() - start, f"budget {budget:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (an outer time limit) unwinds through the finally clauses: the children's
    # process groups are stopped and gpu_check.md says how far the run got.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    deadline = start + args.total_s
    default_out = Path(tempfile.gettempdir()) / "ddsm-gpu-check-dry-run"
    out = args.out or (default_out if args.dry_run else RESULTS_ROOT / card_slug())
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check: writing {out}", flush=True)
    env = _child_env(args.dry_run)
    steps: list[Step] = []
    try:
        write_environment(out)
        steps.append(Step("versions, nvidia-smi", 0, time.perf_counter() - start))
        steps.append(run_tests(args, out, deadline, env))
        steps.append(run_bench(args, out, deadline, env))
    finally:
        total = time.perf_counter() - start
        write_report(out, steps, total, args.dry_run)
        for s in steps:
            print(f"gpu-check: {s.name}: {s.verdict} in {s.seconds:.0f} s; {s.note}", flush=True)
        print(f"gpu-check: total {total:.0f} s; everything is in {out}", flush=True)
    return max((s.status or 0 for s in steps), default=0)


if __name__ == "__main__":
    sys.exit(main())
