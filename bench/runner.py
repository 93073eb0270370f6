"""Runs a plan: for every case and impl, memory, correctness, then latency.

Order within a case, and why:

1. I/O floor (op cases): arithmetic only.
2. Saved-for-backward bytes of eager, torch (grid_sample) and Triton under
   FakeTensorMode: exact, free, so it is reported at every size, including those
   too big to run here.
3. Eager: one forward+backward gives the reference outputs and gradients (and
   warms up), then forward and forward+backward are timed.
4. The peers, torch (grid_sample), Triton and torch.compile: outputs and gradients
   are checked against eager first; a peer that is wrong is reported WRONG and not
   timed. On CPU, torch runs only where eager did (it is checked and compared there).

On a CPU, Triton runs only in the interpreter, which is checked for parity on tiny
cases and never timed, and eager sizes whose forward+backward would take too long
(extrapolated from the smaller sizes already timed) or need too much memory are
skipped with the reason written down.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from . import measure
from .configs import Case, Plan, make_case
from .progress import Progress
from .records import Recorder
from .workloads import Workload, build, input_set_bytes, triton_availability

CPU_TRITON_NOTE = (
    "Triton on CPU runs only in the interpreter (NumPy, one program at a time): "
    "checked for parity on tiny cases, never timed"
)


def _op_floor(case: Case) -> measure.Floor:
    """The fewest bytes the core op must move at this case's shape."""
    return measure.op_floor(
        case.batch, case.grid_h, case.grid_w, case.groups, case.samples, case.dk, case.dv,
        case.torch_dtype,
    )  # fmt: skip


@dataclass
class Settings:
    """How a run measures.

    Attributes:
        mode: "tiny", "quick" or "full".
        device: where tensors live.
        compile: run torch.compile peers at the cases that ask for it.
        compile_backend: torch.compile backend ("inductor"; tests use "eager").
        cpu_call_budget_s: on CPU, skip timing a case whose single eager
            forward+backward is estimated to exceed this many seconds.
        cpu_metric_budget_s: on CPU, seconds spent timing one metric (>= min_reps calls).
        min_reps: fewest timed calls per metric on CPU.
        parity: run the tiny Triton-vs-eager parity cases.
    """

    mode: str
    device: torch.device
    compile: bool = True
    compile_backend: str = "inductor"
    cpu_call_budget_s: float = 4.0
    cpu_metric_budget_s: float = 1.0
    min_reps: int = 3
    parity: bool = True

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


class CpuGate:
    """Decides which cases are small enough to time on a CPU, and says why not.

    The cost of a case is predicted from its eager saved-for-backward bytes (known
    exactly beforehand, from FakeTensorMode) times the slowest seconds-per-byte seen
    so far for that kind: the reference is memory-bound, so this extrapolation is
    linear and conservative.
    """

    #: A kind's first case is timed only below this many saved bytes (no rate yet).
    FIRST_CASE_BYTES = 2 << 30

    def __init__(self, call_budget_s: float, available_bytes: int | None) -> None:
        self.call_budget_s = call_budget_s
        self.available_bytes = available_bytes
        self.rate: dict[str, float] = {}  # kind -> seconds per saved byte (max seen)

    def skip_reason(self, kind: str, work_bytes: int | None) -> str | None:
        """None when the case may be timed; otherwise the reason, for the CSV."""
        if work_bytes is None:
            return "no saved-bytes estimate to size the run by"
        # Saved tensors plus the temporaries of backward: about twice the saved bytes.
        if self.available_bytes is not None and 2 * work_bytes > 0.6 * self.available_bytes:
            return (
                f"needs ~{2 * work_bytes / 2**30:.1f} GiB (2x saved-for-backward) of "
                f"{self.available_bytes / 2**30:.1f} GiB available RAM"
            )
        rate = self.rate.get(kind)
        if rate is None:
            if work_bytes > self.FIRST_CASE_BYTES:
                return "too large to time first on CPU (no smaller size timed yet)"
            return None
        estimate = rate * work_bytes
        if estimate > self.call_budget_s:
            return (
                f"CPU too slow: one eager forward+backward estimated at {estimate:.0f} s "
                f"(extrapolated from smaller sizes) > {self.call_budget_s:g} s budget; "
                "raise --cpu-call-budget or use a GPU"
            )
        return None

    def observe(self, kind: str, work_bytes: int, seconds: float) -> None:
        if work_bytes > 0:
            self.rate[kind] = max(self.rate.get(kind, 0.0), seconds / work_bytes)


def available_ram_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no memory gate)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace(",", ";")
    return text[:300]


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


class Runner:
    """Executes a plan and writes every fact into a :class:`Recorder`."""

    def __init__(self, settings: Settings, recorder: Recorder, progress: Progress) -> None:
        self.s = settings
        self.rec = recorder
        self.progress = progress
        self.triton_ok, self.triton_reason = triton_availability(settings.cuda)
        self.gate = CpuGate(settings.cpu_call_budget_s, available_ram_bytes())
        self.copy_gbps: float | None = None
        # (impl, kind) pairs whose FakeTensorMode count was checked against a real run.
        self._fake_checked: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ plan level
    def run(self, plan: Plan) -> None:
        if not self.triton_ok:
            self.rec.add(None, "triton", "skipped", note=self.triton_reason, config="all")
        if self.s.cuda:
            self._copy_bandwidth()
        for skip in plan.impossible:
            self.rec.add(
                None,
                "all",
                "skipped",
                note=f"{skip.kind} dim={skip.dim} groups={skip.groups}: {skip.reason}",
                config=skip.config,
            )
        if self.s.parity:
            self.run_parity()
        for case in plan.cases:
            self.progress.status(case.label)
            self.run_case(case)
            self.progress.advance(case.label)

    def _copy_bandwidth(self) -> None:
        try:
            self.copy_gbps = measure.copy_bandwidth_gbps(self.s.device)
            self.rec.add(
                None,
                "copy",
                "copy_bandwidth",
                self.copy_gbps,
                "device-to-device copy of 1 GiB (read + write bytes)",
                config="device",
            )
        except Exception as err:
            self.rec.add(None, "copy", "error", note=_one_line(err), config="device")

    # ---------------------------------------------------------------------- parity
    def parity_cases(self) -> list[Case]:
        """Tiny cases on which the Triton kernels are checked against eager.

        Small enough for the interpreter (a few programs each); Dv != Dk for the
        channel-like case, and two heads for the spatial one.
        """
        spatial = make_case("op:spatial", (6, 5), config="parity", batch=1, dim=16, groups=2)
        channel = replace(
            make_case("op:channel", (8, 8), config="parity", batch=1, dim=16), dk=16, dv=20
        )
        module = make_case("module", (4, 4), config="parity", batch=1, dim=16, groups=2)
        return [spatial, channel, module]

    def run_parity(self) -> None:
        """Triton vs eager (outputs and all gradients) and fake vs real saved bytes."""
        for case in self.parity_cases():
            self.progress.status(f"parity {case.label}")
            eager = self._guard(case, "eager", lambda c=case: self._parity_eager(c))
            if eager is not None and self.triton_ok:
                self._guard(case, "triton", lambda c=case, e=eager: self._parity_triton(c, e))
            self.progress.advance(f"parity {case.label}")

    def _parity_eager(self, case: Case) -> dict:
        wl = build(case, "eager", self.s.device)
        self._fake_vs_real(case, "eager", wl)
        return wl.results()

    def _parity_triton(self, case: Case, expected: dict) -> None:
        wl = build(case, "triton", self.s.device)
        check = measure.compare(wl.results(), expected, case.torch_dtype)
        where = "CUDA" if self.s.cuda else "Triton interpreter on CPU; not timed"
        self.rec.add(
            case, "triton", "parity_rel_err", check.worst_error, f"{check.describe()} ({where})"
        )
        self._fake_vs_real(case, "triton", wl)

    def _fake_vs_real_once(self, case: Case, impl: str, wl: Workload) -> None:
        """On CPU, check the FakeTensorMode count once per impl and kind (it is exact)."""
        if not self.s.cuda and (impl, case.kind) not in self._fake_checked:
            self._fake_checked.add((impl, case.kind))
            self._fake_vs_real(case, impl, wl)

    def _fake_vs_real(self, case: Case, impl: str, wl: Workload) -> None:
        """Record saved bytes counted for real and the difference to FakeTensorMode."""
        real = measure.saved_bytes(lambda: wl.run(0), wl.leaves())
        self.rec.add(case, impl, "saved_bytes", real.total, "real run")
        try:
            fake = self._fake_saved(case, impl)
        except Exception as err:
            self.rec.add(
                case, impl, "saved_fake_minus_real", "", f"FakeTensorMode failed: {_one_line(err)}"
            )
            return
        diff = fake.total - real.total
        verdict = "FakeTensorMode count equals the real run" if diff == 0 else "MISMATCH"
        self.rec.add(case, impl, "saved_fake_minus_real", diff, verdict)

    # ------------------------------------------------------------------- one case
    def run_case(self, case: Case) -> None:
        if case.kind != "module":
            floor = _op_floor(case)
            note = "read q/k/v/offsets once + write out once"
            self.rec.add(case, "floor", "floor_fwd_bytes", floor.forward, note)
            self.rec.add(
                case,
                "floor",
                "floor_fwdbwd_bytes",
                floor.forward_backward,
                note + "; bwd reads q/k/v/offsets/dout, writes their grads",
            )

        work = self._saved_fake(case, "eager")
        self._saved_fake(case, "torch")
        if self.triton_ok:
            self._saved_fake(case, "triton")

        expected = self._eager(case, work)
        self._torch_peer(case, expected)

        if not self.triton_ok:
            pass  # said once, at plan level
        elif not self.s.cuda:
            self.rec.add(case, "triton", "skipped", note=CPU_TRITON_NOTE)
        else:
            self._guard(case, "triton", lambda: self._peer(case, "triton", expected))

        if not case.compile or not self.s.compile:
            why = (
                "--no-compile"
                if not self.s.compile
                else (
                    f"torch.compile runs at a few sizes only in {self.s.mode} mode "
                    "(its warm-up takes minutes); --full compiles every size"
                )
            )
            self.rec.add(case, "compiled", "skipped", note=why)
        elif expected is None:
            self.rec.add(
                case, "compiled", "skipped", note="not checkable: eager did not run at this size"
            )
        else:
            self._guard(case, "compiled", lambda: self._peer(case, "compiled", expected))
        self._free()

    def _torch_peer(self, case: Case, expected: dict | None) -> None:
        """The grid_sample backend: checked and timed wherever eager ran (on CUDA, also
        unchecked where eager could not run, as the other peers are)."""
        if expected is None and not self.s.cuda:
            note = "timing: eager did not run at this size on CPU, so nothing to check against"
            self.rec.add(case, "torch", "skipped", note=note)
            return
        self._guard(case, "torch", lambda: self._peer(case, "torch", expected))

    def _saved_fake(self, case: Case, impl: str) -> int | None:
        """Saved-for-backward bytes under FakeTensorMode (rows written); total or None."""
        try:
            saved = self._fake_saved(case, impl)
        except Exception as err:
            self.rec.add(
                case, impl, "error", note=f"saved bytes under FakeTensorMode: {_one_line(err)}"
            )
            return None
        self.rec.add(
            case,
            impl,
            "saved_bytes",
            saved.total,
            f"FakeTensorMode; {saved.tensors} storages, inputs+params included",
        )
        self.rec.add(
            case,
            impl,
            "saved_activation_bytes",
            saved.activations,
            "FakeTensorMode; inputs and params excluded",
        )
        return saved.total

    def _fake_saved(self, case: Case, impl: str) -> measure.SavedBytes:
        with measure.fake_mode():
            wl = build(case, impl, self.s.device)
            return measure.saved_bytes(lambda: wl.run(0), wl.leaves())

    def _eager(self, case: Case, work: int | None) -> dict | None:
        """Time eager if it fits; return its outputs and gradients (None if not run)."""
        if not self.s.cuda:
            reason = self.gate.skip_reason(case.kind, work)
            if reason:
                self.rec.add(case, "eager", "skipped", note=f"timing: {reason}")
                return None
        return self._guard(case, "eager", lambda: self._run_eager(case, work))

    def _run_eager(self, case: Case, work: int | None) -> dict:
        self.progress.status(f"{case.label}  eager")
        wl = self._workload(case, "eager")
        expected = wl.results()  # warm-up, and the ground truth for the peers
        self._fake_vs_real_once(case, "eager", wl)
        fwdbwd_ms = self._time(case, "eager", wl)
        if work is not None and fwdbwd_ms is not None:
            self.gate.observe(case.kind, work, fwdbwd_ms * 1e-3)
        return expected

    def _peer(self, case: Case, impl: str, expected: dict | None) -> None:
        """Check a peer (torch, triton, compiled) against eager, then time it if it is right."""
        self.progress.status(f"{case.label}  {impl}" + ("  (compiling)" * (impl == "compiled")))
        start = time.perf_counter()
        wl = self._workload(case, impl)
        results = wl.results()  # first call compiles (forward and backward graphs)
        if impl == "compiled":
            self.rec.add(
                case,
                impl,
                "compile_s",
                time.perf_counter() - start,
                f"first forward+backward, backend={self.s.compile_backend}",
            )
        if expected is None:
            note = "unchecked: eager did not run at this size (checked at smaller sizes)"
            self.rec.add(case, impl, "check_rel_err", "", note)
        else:
            check = measure.compare(results, expected, case.torch_dtype)
            self.rec.add(case, impl, "check_rel_err", check.worst_error, check.describe())
            if not check.ok:
                self.rec.add(case, impl, "skipped", note=f"not timed: {check.describe()}")
                return
        if impl == "torch":
            self._fake_vs_real_once(case, impl, wl)
        if impl == "compiled":
            saved = measure.saved_bytes(lambda: wl.run(0), wl.leaves())
            self.rec.add(case, impl, "saved_bytes", saved.total, "real run")
            self.rec.add(
                case,
                impl,
                "saved_activation_bytes",
                saved.activations,
                "real run; inputs and params excluded",
            )
        self._time(case, impl, wl)

    # --------------------------------------------------------------------- timing
    def _workload(self, case: Case, impl: str) -> Workload:
        sets = self._rotation(case) if self.s.cuda else 1
        return build(case, impl, self.s.device, sets=sets, compile_backend=self.s.compile_backend)

    def _rotation(self, case: Case) -> int:
        """Input copies so that one rotation spans twice the L2 cache (at most 8)."""
        props = torch.cuda.get_device_properties(self.s.device)
        l2 = getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)
        return max(1, min(8, math.ceil(2 * l2 / max(input_set_bytes(case), 1))))

    def _time(self, case: Case, impl: str, wl: Workload) -> float | None:
        """Time forward and forward+backward; write rows; return fwd+bwd median (ms)."""
        rotate = itertools.cycle(range(len(wl.input_sets)))

        def fwd() -> None:
            wl.run(next(rotate))

        def fwdbwd() -> None:
            wl.run_backward(next(rotate))
            if not self.s.cuda:
                wl.clear_grads()  # do_bench does this itself via grad_to_none

        medians = {}
        for name, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            self.progress.status(f"{case.label}  {impl} {name}")
            t = self._timing(fn, wl)
            medians[name] = t.p50_ms
            how = "triton.testing.do_bench" if self.s.cuda else f"perf_counter, {t.samples} calls"
            for q, v in (("p50", t.p50_ms), ("p20", t.p20_ms), ("p80", t.p80_ms)):
                self.rec.add(case, impl, f"{name}_ms_{q}", v, how)
        if self.s.cuda:
            self._cuda_extras(case, impl, wl, medians)
        return medians["fwdbwd"]

    def _timing(self, fn: Callable[[], None], wl: Workload) -> measure.Timing:
        if self.s.cuda:
            return measure.time_cuda(fn, grad_to_none=wl.leaves())
        return measure.time_cpu(
            fn, warmup=0, min_reps=self.s.min_reps, budget_s=self.s.cpu_metric_budget_s
        )

    def _cuda_extras(self, case: Case, impl: str, wl: Workload, medians: dict) -> None:
        """Peak memory, and for the op the fraction of the bandwidth floor achieved."""
        wl.clear_grads()
        peak_fwd = measure.cuda_peak_bytes(lambda: wl.run(0), self.s.device)
        self.rec.add(case, impl, "peak_fwd_bytes", peak_fwd, "above inputs already allocated")
        peak_all = measure.cuda_peak_bytes(lambda: wl.run_backward(0), self.s.device)
        self.rec.add(case, impl, "peak_fwdbwd_bytes", peak_all, "above inputs already allocated")
        wl.clear_grads()
        if case.kind == "module" or not self.copy_gbps:
            return
        floor = _op_floor(case)
        for name, nbytes in (("fwd", floor.forward), ("fwdbwd", floor.forward_backward)):
            frac = measure.bandwidth_fraction(nbytes, medians[name], self.copy_gbps)
            self.rec.add(
                case,
                impl,
                f"bw_frac_{name}",
                frac,
                f"floor bytes / median time / copy bandwidth {self.copy_gbps:.0f} GB/s",
            )

    # ------------------------------------------------------------------- plumbing
    def _guard(self, case: Case, impl: str, fn: Callable[[], object]):
        """Run ``fn``; turn an exception into an ``error``/``skipped`` row instead of a crash."""
        try:
            return fn()
        except Exception as err:
            if _is_oom(err):
                self.rec.add(case, impl, "skipped", note="out of memory")
            else:
                self.rec.add(case, impl, "error", note=_one_line(err))
                if self.s.mode != "tiny":
                    traceback.print_exc(limit=3)
            self._free()
            return None

    def _free(self) -> None:
        gc.collect()
        if self.s.cuda:
            torch.cuda.empty_cache()
