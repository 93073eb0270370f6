"""The GPU profile, ``python -m ddsm_triton.bench --gpu``: the named Cityscapes points on a
lent GPU within a time budget, written as it goes.

It runs the cases of :func:`configs.build_gpu_plan` through the same :class:`Runner` as
every other sweep (so every peer the runner knows is checked, then timed), but:

* it stops starting cases once the next one would not finish within ``--budget-s``
  (estimated from the cases already run), and says so in the CSV;
* results.csv and summary.md are rewritten after every case, so a run killed at its
  limit still leaves what it measured;
* afterwards it writes a per-kernel time table (torch.profiler) of the Triton op and the
  module at the largest named point, ``kernels.md``, and the configurations the Triton
  autotuner chose, ``autotune_configs.json``.

``--gpu --dry-run`` does all of it with toy shapes, on CPU (the Triton kernels in the
interpreter, not timed) when there is no GPU: a check of the plumbing, not a benchmark.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import summary
from .configs import Case, Plan, build_gpu_plan
from .progress import Progress
from .records import Recorder
from .runner import Runner, Settings
from .workloads import build

#: Seconds kept after the last case for the kernel table, the autotuner dump and plots.
RESERVE_S = 40.0
#: Guess for a kind's first case (no timing of it yet), and what a compile adds.
FIRST_CASE_S = {"cuda": 20.0, "cpu": 5.0}
COMPILE_S = {"cuda": 75.0, "cpu": 30.0}
#: Profiled iterations of forward+backward per case in the kernel table.
PROFILE_ITERS = 3
TOP_KERNELS = 12


class CheckpointProgress(Progress):
    """A progress bar that also writes results.csv and summary.md after each case."""

    def __init__(self, total: int, recorder: Recorder, out: Path, *, enabled: bool) -> None:
        super().__init__(total, enabled=enabled)
        self.recorder = recorder
        self.out = out

    def advance(self, text: str = "") -> None:
        super().advance(text)
        self.checkpoint()

    def checkpoint(self) -> None:
        self.recorder.write(self.out / "results.csv")
        (self.out / "summary.md").write_text(
            "```\n" + summary.render(self.recorder.rows) + "\n```\n"
        )


@dataclass
class Budget:
    """When to stop starting cases. A case is guessed to take as long as the last case of
    its kind, up to twice that for a larger map: at these sizes fixed costs (compiling,
    autotuning, do_bench's minimum run) weigh as much as the pixels."""

    deadline: float  # time.perf_counter() value
    device_type: str
    last: dict[str, tuple[int, float]] = field(default_factory=dict)  # kind -> (pixels, s)

    def estimate(self, case: Case) -> float:
        compile_s = COMPILE_S[self.device_type] if case.compile else 0.0
        if case.kind not in self.last:
            return FIRST_CASE_S[self.device_type] + compile_s
        pixels, seconds = self.last[case.kind]
        return seconds * min(2.0, max(1.0, case.pixels / pixels)) + compile_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def observe(self, case: Case, seconds: float) -> None:
        if not case.compile:  # a compile would inflate the next guess
            self.last[case.kind] = (case.pixels, seconds)


def run(
    settings: Settings,
    recorder: Recorder,
    out: Path,
    *,
    budget_s: float,
    dry_run: bool = False,
    quiet: bool = False,
) -> None:
    """Run the GPU profile into ``out`` (see the module docstring); ``budget_s`` seconds
    in all, the kernel table and autotuner dump included (plots are the caller's)."""
    plan = build_gpu_plan(dry_run=dry_run)
    budget = Budget(time.perf_counter() + budget_s - RESERVE_S, settings.device.type)
    progress = CheckpointProgress(len(plan.cases) + 2, recorder, out, enabled=not quiet)
    recorder.add(None, "all", "info", note=f"GPU profile, budget {budget_s:.0f} s", config="run")
    runner = Runner(settings, recorder, progress)
    runner.run(Plan([], plan.impossible))  # device facts (copy bandwidth), no cases yet
    for case in plan.cases:
        _run_case(runner, budget, case, recorder, progress)
    progress.status("per-kernel time table (torch.profiler)")
    _guarded(
        recorder, "kernel table", lambda: kernel_table(plan.cases, settings.device, out, budget)
    )
    progress.advance("kernel table")
    _guarded(recorder, "autotuner dump", lambda: write_autotune_configs(out))
    progress.advance("autotuner configs")
    progress.close()


def _run_case(
    runner: Runner, budget: Budget, case: Case, recorder: Recorder, progress: Progress
) -> None:
    """Run one case if the budget allows (dropping its compile first if only that does not
    fit); otherwise record why it was skipped."""
    left = budget.left()
    if case.compile and budget.estimate(case) > left:
        compile_s = COMPILE_S[budget.device_type]
        note = f"GPU profile budget: {left:.0f} s left, a compile takes ~{compile_s:.0f} s"
        recorder.add(case, "compiled", "skipped", note=note)
        case = replace(case, compile=False)
    if budget.estimate(case) > left:
        need = budget.estimate(case)
        note = f"GPU profile budget: {left:.0f} s left, this case takes ~{need:.0f} s"
        recorder.add(case, "all", "skipped", note=note)
        progress.advance(f"{case.label} (skipped: budget)")
        return
    progress.status(case.label)
    start = time.perf_counter()
    runner.run_case(case)
    budget.observe(case, time.perf_counter() - start)
    progress.advance(case.label)


def _guarded(recorder: Recorder, what: str, fn: Callable[[], object]) -> None:
    """An optional output: a failure becomes an error row, not a lost run."""
    try:
        fn()
    except Exception as err:
        recorder.add(None, "all", "error", note=f"{what}: {type(err).__name__}: {err}"[:300])
        print(f"warning: {what} failed: {err}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ kernel table
def _device_us(event) -> float:
    """Self time on the GPU of a profiler average, in microseconds (0 for host events).
    ``self_device_time_total`` since torch 2.4; ``self_cuda_time_total`` before."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def profile_rows(fn: Callable[[], None], device: torch.device) -> list[tuple[str, int, float]]:
    """(kernel or op name, calls, total self time in us) of ``PROFILE_ITERS`` calls of
    ``fn``, slowest first: GPU kernels on CUDA, host ops on CPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    fn()  # warm-up: compiles and autotunes outside the profile
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(PROFILE_ITERS):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = list(prof.key_averages())
    if device.type == "cuda":
        # Kernels only: a host op's self device time repeats its kernels' time.
        kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
        rows = [(e.key, int(e.count), _device_us(e)) for e in kernels or events]
    else:
        rows = [(e.key, int(e.count), float(e.self_cpu_time_total)) for e in events]
    return sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])


def _profiled_cases(cases: list[Case]) -> list[Case]:
    """The largest map of the plan, each kind and dtype (the goal configuration)."""
    largest = max(c.pixels for c in cases)
    return [c for c in cases if c.pixels == largest]


def kernel_table(cases: list[Case], device: torch.device, out: Path, budget: Budget) -> None:
    """kernels.md: per case, the Triton op's (or module's) kernels by GPU time.

    On CPU (the dry run) the eager reference is profiled instead: the interpreted Triton
    kernels run for minutes under the profiler, and their host time means nothing."""
    cuda = device.type == "cuda"
    impl = "triton" if cuda else "eager"
    where = "GPU self time" if cuda else "host self time of the eager reference (CPU dry run)"
    lines = [
        f"# Per-kernel time, {impl}, forward+backward",
        "",
        f"torch.profiler, {PROFILE_ITERS} iterations after one warm-up; {where}; "
        f"the {TOP_KERNELS} largest entries per case, times per iteration.",
    ]
    path = out / "kernels.md"
    for case in _profiled_cases(cases):
        if budget.left() < -RESERVE_S / 2:  # the reserve is for plots, mostly
            lines += ["", f"## {case.label}: not profiled, over the time budget"]
            break
        wl = build(case, impl, device)
        rows = profile_rows(lambda wl=wl: wl.run_backward(0), device)
        total = sum(us for _, _, us in rows) or 1.0
        lines += ["", f"## {case.label}", "", "| kernel | calls/iter | us/iter | share |"]
        lines.append("|---|---:|---:|---:|")
        for name, calls, us in rows[:TOP_KERNELS]:
            short = name if len(name) <= 70 else name[:67] + "..."
            lines.append(
                f"| `{short}` | {calls / PROFILE_ITERS:g} | {us / PROFILE_ITERS:.1f} "
                f"| {100 * us / total:.1f}% |"
            )
        lines.append(f"| total | | {total / PROFILE_ITERS:.1f} | 100% |")
        path.write_text("\n".join(lines) + "\n")  # partial table survives a kill
        del wl
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------ autotuner dump
def autotune_choices() -> list[dict]:
    """Every Triton autotuner in ``ddsm_triton.kernels``: its configurations and, per
    autotuning key seen in this process, the configuration it chose."""
    from triton.runtime.autotuner import Autotuner

    found = []
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("ddsm_triton.kernels") or module is None:
            continue
        for attr, obj in sorted(vars(module).items()):
            if not isinstance(obj, Autotuner):
                continue
            found.append(
                {
                    "kernel": f"{module_name}.{attr}",
                    "key_args": list(getattr(obj, "keys", [])),
                    "configs": [_config_dict(c) for c in obj.configs],
                    "chosen": {str(k): _config_dict(c) for k, c in obj.cache.items()},
                }
            )
    return found


def _config_dict(config) -> dict:
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def write_autotune_configs(out: Path) -> None:
    entries = autotune_choices()
    note = (
        "'chosen' maps each autotuning key seen in the profile (key args, then the "
        "pointer dtypes) to the configuration the autotuner picked; an autotuner with a "
        "single configuration (the interpreter's) never tunes, so its 'chosen' is empty"
    )
    text = json.dumps({"note": note, "autotuners": entries}, indent=1)
    (out / "autotune_configs.json").write_text(text + "\n")
