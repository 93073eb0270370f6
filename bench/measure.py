"""Measurement helpers: latency, saved-for-backward bytes, peak memory, the I/O floor.

Every helper is independent of DDSM: it takes callables and tensors, so it can be
unit-tested on a known op (``x * y`` saves exactly x and y).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddsm_triton.memory import SavedBytes, saved_bytes  # noqa: F401 (re-exported)

# Quantiles reported with every latency: median and a robust spread (p20, p80),
# which, unlike min/max, a single preempted iteration on a shared machine cannot move.
QUANTILES = (0.5, 0.2, 0.8)


# ------------------------------------------------------------------------ latency
@dataclass(frozen=True)
class Timing:
    """Latency statistics of one callable, in milliseconds."""

    p50_ms: float
    p20_ms: float
    p80_ms: float
    samples: int  # timed calls (CPU); 0 when do_bench chose the count itself


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile ``q`` in [0, 1] of ``values`` (like numpy's default)."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_cpu(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    min_reps: int = 3,
    max_reps: int = 50,
    budget_s: float = 1.0,
) -> Timing:
    """Wall-clock latency of ``fn`` on CPU with ``time.perf_counter``.

    Runs ``warmup`` untimed calls, then timed calls until ``budget_s`` seconds are
    spent, at least ``min_reps`` and at most ``max_reps`` of them. CPU ops are
    synchronous, so no device synchronisation is needed. (``triton.testing.do_bench``
    cannot be used here: it needs a GPU driver.)
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_reps and (
        len(samples) < min_reps or time.perf_counter() - start < budget_s
    ):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(
        quantile(samples, 0.5), quantile(samples, 0.2), quantile(samples, 0.8), len(samples)
    )


def time_cuda(
    fn: Callable[[], object], *, grad_to_none: Sequence[torch.Tensor] | None = None
) -> Timing:
    """GPU latency of ``fn`` with ``triton.testing.do_bench`` (median, p20, p80).

    do_bench warms up, flushes L2 between calls and times with CUDA events;
    ``grad_to_none`` tensors get ``.grad = None`` before each call so
    forward+backward timings do not include gradient accumulation.
    """
    import triton.testing

    # do_bench sizes its loops from a ~5-call estimate and a time budget (ms); a
    # 200 ms eager call would get a single timed repeat under the default 100 ms,
    # so the budget grows with the call: at least ~10 repeats, whatever the size.
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once_ms = (time.perf_counter() - start) * 1e3
    p50, p20, p80 = triton.testing.do_bench(
        fn,
        warmup=max(25.0, 2 * once_ms),
        rep=max(100.0, 10 * once_ms),
        grad_to_none=list(grad_to_none or []),
        quantiles=list(QUANTILES),
    )
    return Timing(float(p50), float(p20), float(p80), 0)


@contextlib.contextmanager
def fake_mode():
    """``FakeTensorMode``: tensors carry shapes and dtypes but no data, ops cost nothing.

    Factory functions and modules built inside it are fake too, so a forward at
    256x512 with 25 GB of activations can be traced on a laptop.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        yield


# ------------------------------------------------------------------ peak memory
def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated on ``device`` while ``fn()`` runs, above what was live before."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# --------------------------------------------------------------- bandwidth floor
def nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    n = 1
    for s in shape:
        n *= s
    return n * torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class Floor:
    """The fewest bytes the core op must move (bytes).

    forward: read query, key, value, offsets once; write out once.
    backward: read query, key, value, offsets and dout once; write dquery, dkey,
        dvalue and doffsets once (``out`` and the softmax are recomputed, not read).
    """

    forward: int
    backward: int

    @property
    def forward_backward(self) -> int:
        return self.forward + self.backward


def op_floor(
    batch: int, h: int, w: int, groups: int, samples: int, dk: int, dv: int, dtype: torch.dtype
) -> Floor:
    """I/O floor of ``dynamic_sample_attention`` on a (batch, h, w, groups) grid.

    Shapes: query/key (B,H,W,G,Dk), value/out (B,H,W,G,Dv), offsets (B,H,W,G,N,2),
    all in ``dtype``.
    """
    cells = (batch, h, w, groups)
    qk = nbytes((*cells, dk), dtype)
    v = nbytes((*cells, dv), dtype)
    off = nbytes((*cells, samples, 2), dtype)
    inputs = 2 * qk + v + off
    out = v
    return Floor(forward=inputs + out, backward=inputs + out + inputs)  # + dout, + grads


def bandwidth_fraction(floor_bytes: int, time_ms: float, copy_gbps: float) -> float:
    """Achieved floor bandwidth over copy bandwidth: ``floor / time / copy_bw``, in [0, ~1]."""
    return floor_bytes / (time_ms * 1e-3) / (copy_gbps * 1e9)


def copy_bandwidth_gbps(device: torch.device, nbytes_: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write bytes over time)."""
    src = torch.empty(nbytes_ // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src)).p50_ms
    return 2 * nbytes_ / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------- correctness
@dataclass(frozen=True)
class Check:
    """Result of comparing a peer's outputs and gradients with eager's.

    ``worst_error`` is max |peer - eager| / max |eager| over the worst tensor, so an
    all-zero gradient scores 1.0 however small the gradient is.
    """

    ok: bool
    worst_error: float
    worst_name: str
    tolerance: float

    def describe(self) -> str:
        verdict = "ok" if self.ok else "WRONG"
        return (
            f"{verdict}: worst {self.worst_name} rel. err {self.worst_error:.2e} "
            f"(tol {self.tolerance:.0e})"
        )


#: Relative tolerances per dtype: float32 allows TF32 matmuls in Triton kernels,
#: half types the rounding of their 8/11-bit mantissas.
TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2, torch.float64: 1e-8}


def relative_error(actual: torch.Tensor | None, expected: torch.Tensor | None) -> float:
    """max |actual - expected| / max |expected| (inf when one side is missing or NaN)."""
    if actual is None and expected is None:
        return 0.0
    if actual is None or expected is None or actual.shape != expected.shape:
        return float("inf")
    a, e = actual.detach().double(), expected.detach().double()
    scale = e.abs().max().item() if e.numel() else 0.0
    diff = (a - e).abs().max().item() if e.numel() else 0.0
    if diff != diff:  # NaN
        return float("inf")
    return diff / scale if scale > 0 else diff


def compare(
    actual: dict[str, torch.Tensor | None],
    expected: dict[str, torch.Tensor | None],
    dtype: torch.dtype,
) -> Check:
    """Compare named tensors (output and every gradient) of a peer against eager."""
    tol = TOLERANCE.get(dtype, 5e-3)
    errors = {name: relative_error(actual.get(name), ref) for name, ref in expected.items()}
    worst = max(errors, key=lambda name: errors[name])
    return Check(errors[worst] <= tol, errors[worst], worst, tol)
