"""Measures a plan, case by case: the bytes each backend saves for backward (exact, and
under FakeTensorMode at any size), the reference's output and gradients, then each backend
checked against them and timed only if it matches (``triton.testing.do_bench`` on a GPU,
``torch.utils.benchmark.Timer`` on CPU, where the Triton kernels run in the interpreter:
checked on the tiny "parity" cases, never timed)."""

from __future__ import annotations

import gc
import time

import torch

from ddsm_triton.memory import saved_bytes

from .cases import BACKENDS, Case, Workload, build, io_floor_bytes
from .records import Recorder

#: max |x - ref| / max |ref| per tensor: TF32 matmuls in fp32, 8/11-bit mantissas in halves.
TOLERANCE = {"fp32": 5e-3, "bf16": 5e-2, "fp16": 2e-2}


def latency_ms(fn, cuda: bool, min_run_time: float) -> list[float]:
    """[median, p20, p80] milliseconds of ``fn()`` (already warmed up)."""
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    from torch.utils.benchmark import Timer

    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    times = torch.tensor(timer.blocked_autorange(min_run_time=min_run_time).times)
    return (1e3 * times.quantile(torch.tensor([0.5, 0.2, 0.8], dtype=times.dtype))).tolist()


def worst_error(actual: dict, expected: dict) -> tuple[float, str]:
    """(max |actual - expected| / max |expected|, its tensor's name) over the output and
    every gradient; a missing or NaN tensor scores inf, an all-zero gradient 1."""

    def error(a: torch.Tensor | None, e: torch.Tensor | None) -> float:
        if a is None or e is None or a.shape != e.shape:
            return 0.0 if a is e else float("inf")
        err = (a.double() - e.double()).abs().max() / e.double().abs().max().clamp_min(1e-30)
        return err.nan_to_num(float("inf")).item()

    return max((error(actual.get(name), e), name) for name, e in expected.items())


def fake_saved_bytes(case: Case, backend: str, device: torch.device):
    """``saved_bytes`` of ``backend`` on ``case`` under FakeTensorMode: no compute."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        wl = build(case, backend, device)
        return saved_bytes(wl.fwd, wl.leaves())


class Budget:
    """The one time limit. A backend is timed at a case if one forward+backward, predicted
    from the slowest seconds per byte the reference saves (known beforehand; it is
    memory-bound) seen for its kind and backend, is at most ``call_s`` and the timing ends
    before the deadline."""

    def __init__(self, total_s: float, call_s: float) -> None:
        self.deadline, self.call_s = time.perf_counter() + total_s, call_s
        self.rate: dict[tuple[str, str], float] = {}

    def reason(self, key: tuple[str, str], work: int, extra_s: float = 0.0) -> str | None:
        """None if ``key`` = (kind, backend) may be timed at ``work``; else why not."""
        call, left = self.rate.get(key, 0.0) * work, self.deadline - time.perf_counter()
        if call > self.call_s:
            return f"one forward+backward predicted at {call:.1f} s > {self.call_s:g} s (--call-s)"
        if 4 * call + extra_s > left:  # a warm-up, then >= 1 timed call per phase
            return f"time budget: {left:.0f} s left (--budget-s)"
        return None

    def observe(self, key: tuple[str, str], work: int, seconds: float) -> None:
        self.rate[key] = max(self.rate.get(key, 0.0), seconds / max(work, 1))


class Run:
    """Measures cases into ``rec``; ``min_run_time``: seconds to time a phase on CPU."""

    def __init__(self, rec: Recorder, device, budget: Budget, compiler: str, min_run_time: float):
        self.rec, self.device, self.budget, self.compiler = rec, device, budget, compiler
        self.cuda, self.min_run_time = device.type == "cuda", min_run_time
        self.compile_s = 60.0 if compiler == "inductor" else 5.0  # a guess, per compile
        if self.cuda:
            src = torch.empty(1 << 28, device=device).uniform_()  # 1 GiB, read and written
            copy_gbps = 2**31 / latency_ms(lambda: src.clone(), True, 0)[0] / 1e6
            rec.add(None, "all", "copy_gbps", copy_gbps, "device-to-device copy of 1 GiB")
        else:
            note = "Triton on CPU runs in the interpreter: checked on the parity cases, not timed"
            rec.add(None, "triton", "info", note=note, config="all")

    def case(self, case: Case, backends: tuple[str, ...]) -> None:
        """Saved bytes, then each of ``backends`` checked against the reference, then timed
        (on the "parity" cases: checked, and the saved bytes counted for real)."""
        self.fake = {b: fake_saved_bytes(case, b, self.device) for b in BACKENDS}
        for backend, saved in self.fake.items():
            self.rec.add(case, backend, "saved_bytes", saved.total, "FakeTensorMode")
        work = self.fake["reference"].total
        ref_why = self.budget.reason((case.kind, "reference"), work)
        ref = expected = None
        if not ref_why:
            ref = self._guard(case, "reference", lambda: build(case, "reference", self.device))
            expected = ref and self._guard(case, "reference", ref.results)
            if expected is None:
                ref_why = "the reference did not run here: nothing to check against"
        for backend in backends:
            extra = self.compile_s if backend.endswith("compile") else 0.0
            if why := ref_why or self.budget.reason((case.kind, backend), work, extra):
                self.rec.add(case, backend, "skipped", note=f"not timed: {why}")
                continue
            self._guard(case, backend, lambda b=backend: self._time(case, b, work, ref, expected))
            gc.collect()
            torch.cuda.empty_cache() if self.cuda else None

    def _time(self, case: Case, backend: str, work: int, ref: Workload, expected: dict) -> None:
        wl = ref if backend == "reference" else build(case, backend, self.device, self.compiler)
        start = time.perf_counter()
        got = wl.results()  # also the warm-up: compiles, autotunes
        if backend.endswith("compile"):
            self.rec.add(case, backend, "compile_s", time.perf_counter() - start, "first call")
            saved = saved_bytes(wl.fwd, wl.leaves()).total
            self.rec.add(case, backend, "saved_bytes", saved, "real run")
        err, name = worst_error(got, expected)
        ok = err <= TOLERANCE[case.dtype]
        self.rec.add(case, backend, "check_err", err, f"{'ok' if ok else 'WRONG'}: worst is {name}")
        if case.config == "parity":  # checked only, and the FakeTensorMode count vs a real one
            real = saved_bytes(wl.fwd, wl.leaves()).total
            diff = self.fake[backend.partition("+")[0]].total - real
            self.rec.add(case, backend, "fake_minus_real_bytes", diff, "FakeTensorMode vs real")
            return
        if not ok:
            self.rec.add(case, backend, "skipped", note="not timed: differs from the reference")
            return
        del got
        median, how = {}, "do_bench" if self.cuda else "torch.utils.benchmark"
        for phase, fn in (("fwd", wl.fwd), ("fwdbwd", wl.fwdbwd)):
            p50, p20, p80 = latency_ms(fn, self.cuda, self.min_run_time)
            median[phase] = p50
            self.rec.add(case, backend, f"{phase}_ms", p50, f"p20 {p20:.4g}, p80 {p80:.4g}; {how}")
        self.budget.observe((case.kind, backend), work, median["fwdbwd"] / 1e3)
        if self.cuda:
            for t in wl.leaves():  # the last call's gradients would count as the baseline
                t.grad = None
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            wl.fwdbwd()
            peak = torch.cuda.max_memory_allocated() - before
            self.rec.add(case, backend, "peak_fwdbwd_bytes", peak, "above the inputs")
            for phase, floor in zip(median, io_floor_bytes(case), strict=True):
                if case.kind != "module":
                    self.rec.add(case, backend, f"{phase}_gbps", floor / median[phase] / 1e6)

    def _guard(self, case: Case, backend: str, fn):
        """``fn()``, or an ``error`` row (``skipped`` if out of memory) and None."""
        try:
            return fn()
        except Exception as err:
            oom = "out of memory" in str(err).lower()
            note = "out of memory" if oom else f"{type(err).__name__}: {err}"[:300]
            self.rec.add(case, backend, "skipped" if oom else "error", note=note.replace("\n", " "))
            return None
