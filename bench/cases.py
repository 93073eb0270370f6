"""What the benchmark measures: the shape record (:class:`Case`), the plans, and each
backend's forward and backward on a case (:func:`build`). Backends are named as the
library names them, a variant after "+": "reference+compile" (``torch.compile``),
"triton+deterministic" (no atomics, under ``torch.use_deterministic_algorithms``).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

KINDS = ("op:spatial", "op:channel", "module")
#: A 1024x2048 Cityscapes image at strides 16, 8 and 4 (dim 256, batch 2).
NAMED = {(64, 128): "cityscapes-s16", (128, 256): "cityscapes-s8", (256, 512): "cityscapes-s4"}
SIZES, TOY = ((32, 32), (64, 64), *NAMED), ((8, 8), (16, 16), (16, 32))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The library's backends, and what a user could write in plain PyTorch (speed-ups are
#: quoted against the fastest of those).
BACKENDS, PYTORCH = ("reference", "torch", "triton"), ("reference", "reference+compile", "torch")
POOL, CHANNEL_KERNEL, VALUE_DOWN = 8, 3, 2  # DDSM's defaults


@dataclass(frozen=True)
class Case:
    """One benchmarked problem, a CSV column per field. Kinds: "op:spatial" (the op as the
    spatial branch calls it: grid = x_low), "op:channel" (as the channel branch does: a
    sqrt(dim) square grid, Dk = 8*8, Dv = x_high pooled), "module" (DDSM; x_high is half
    x_low). N = samples = k*k; dk, dv per head."""

    kind: str
    config: str  # a named configuration, or "size" (or "parity", the tiny checks)
    batch: int
    map_h: int
    map_w: int
    dim: int
    grid_h: int
    grid_w: int
    groups: int
    samples: int
    dk: int
    dv: int
    dtype: str


def make_case(kind: str, hw: tuple[int, int], config: str = "size", **kw) -> Case:
    """The case of ``kind`` for an x_low of ``hw`` = (H, W) pixels; ``kw``: batch (2),
    dim (256), groups (1), kernel (3), dtype ("fp32")."""
    kw = {"batch": 2, "dim": 256, "groups": 1, "kernel": 3, "dtype": "fp32"} | kw
    (h, w), batch, dim, groups, kernel, dtype = hw, *kw.values()
    grid, samples, dk, dv = (h, w), kernel**2, dim // groups, dim // groups
    if kind == "op:channel":  # one head, its own kernel; Dv is x_high pooled by VALUE_DOWN
        grid, groups, samples, dk = (math.isqrt(dim),) * 2, 1, CHANNEL_KERNEL**2, POOL**2
        dv = max(1, h // 2 // VALUE_DOWN) * max(1, w // 2 // VALUE_DOWN)
    return Case(kind, config, batch, h, w, dim, *grid, groups, samples, dk, dv, dtype)


def io_floor_bytes(case: Case) -> tuple[int, int]:
    """(forward, forward+backward) fewest bytes through DRAM: the forward reads q, k, v,
    offsets once and writes out; the backward reads them and dout, writes their grads."""
    cells = case.batch * case.grid_h * case.grid_w * case.groups
    item = DTYPES[case.dtype].itemsize
    inputs = cells * (2 * case.dk + case.dv + 2 * case.samples) * item
    out = cells * case.dv * item
    return inputs + out, 2 * (inputs + out) + inputs


#: Tiny cases (two heads; Dv != Dk) on which every backend is checked, not timed: on CPU
#: the only ones the interpreted Triton kernels run.
PARITY = (
    make_case("op:spatial", (6, 5), "parity", batch=1, dim=16, groups=2),
    make_case("op:channel", (8, 12), "parity", batch=1, dim=16),
    make_case("module", (4, 4), "parity", batch=1, dim=16, groups=2),
)


def plan(mode: str, *, cuda: bool) -> list[tuple[Case, tuple[str, ...]]]:
    """(case, backends to time): the parity cases, every kind at every size, smallest first
    (the time budget extrapolates upwards), then the compiles (a minute each: a budget drops
    them first). "tiny": toy shapes for tests; "gpu": the named points in bf16 and fp32;
    "gpu-dry-run": that structure on toy maps."""
    gpu, toy = mode.startswith("gpu"), mode in ("tiny", "gpu-dry-run")
    sizes = {"tiny": TOY[:2], "gpu-dry-run": TOY, "gpu": tuple(NAMED)}.get(mode, SIZES)
    dtypes = ("bf16", "fp32") if gpu else ("fp32", "bf16")[: 1 + cuda]  # fp32 compiles
    batch, dim = (1, 16) if toy else (2, 256)
    timed = ("reference", "torch") + ("triton",) * cuda + ("triton+deterministic",) * (gpu and cuda)
    names = dict(zip(sizes, NAMED.values(), strict=False)) if gpu else NAMED
    cases = [
        make_case(kind, hw, names.get(hw, "size"), batch=batch, dim=dim, dtype=dtype)
        for dtype in dtypes
        for hw in sizes
        for kind in KINDS
    ]
    kinds = KINDS[: 3 if mode == "full" else 2 if gpu else 1]
    first = [c for c in cases if (c.map_h, c.map_w) == sizes[0] or mode == "full"]
    compiled = [(c, ("reference+compile",)) for c in first if c.kind in kinds and c.dtype == "fp32"]
    checked = (*BACKENDS, "triton+deterministic")
    return [(c, checked) for c in PARITY] + [(c, timed) for c in cases] + compiled


@dataclass
class Workload:
    """A backend's forward on a case's inputs (leaves that require grad) and parameters."""

    forward: Callable[..., torch.Tensor]
    inputs: dict[str, torch.Tensor]
    params: dict[str, torch.Tensor]
    grad_out: torch.Tensor
    deterministic: bool = False

    def leaves(self) -> list[torch.Tensor]:
        return [*self.inputs.values(), *self.params.values()]

    def fwd(self) -> torch.Tensor:
        return self.forward(*self.inputs.values())

    def fwdbwd(self) -> torch.Tensor:
        """Forward and backward (gradients replaced, not accumulated); returns the output."""
        for t in self.leaves():
            t.grad = None
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        try:
            out = self.fwd()
            out.backward(self.grad_out)
        finally:
            torch.use_deterministic_algorithms(False)
        return out

    def results(self) -> dict[str, torch.Tensor | None]:
        """The output and every gradient of one forward+backward, by name."""
        out = {"out": self.fwdbwd().detach()}
        return out | {f"grad {n}": t.grad for n, t in {**self.inputs, **self.params}.items()}


def build(case: Case, backend: str, device: torch.device, compiler: str = "inductor") -> Workload:
    """``backend`` on ``case``: inputs, weights and dout drawn from a seed of the case, the
    same for every backend. Works under ``FakeTensorMode`` (compiled variants excepted)."""
    from ddsm_triton import DDSM, dynamic_sample_attention, reference

    base, _, variant = backend.partition("+")
    torch.manual_seed(zlib.crc32(repr(case).encode()))
    c, dtype, params = case, DTYPES[case.dtype], {}
    with torch.device(device):
        if c.kind == "module":
            torch.set_default_dtype(dtype)  # parameters born in the dtype: fakes cannot .to()
            try:
                k = math.isqrt(c.samples)
                layer = DDSM(c.dim, c.dim, c.dim, k, groups=c.groups, backend=base)
            finally:
                torch.set_default_dtype(torch.float32)
            with torch.no_grad():  # fractional offsets; DDSM starts on the integer grid
                for conv in (layer.spatial.offset, layer.channel.offset):
                    conv.weight.normal_(std=0.5 / math.sqrt(conv.weight[0].numel()))
                    conv.bias.normal_(std=0.1)
            forward, params = layer, dict(layer.named_parameters())
            shapes = {"x_low": (c.map_h, c.map_w), "x_high": (c.map_h // 2, c.map_w // 2)}
            shapes = {n: (c.dim, *hw) for n, hw in shapes.items()}
            out_shape = (c.batch, c.dim, c.map_h, c.map_w)
        else:
            forward = reference.dynamic_sample_attention
            if base != "reference":
                forward = functools.partial(dynamic_sample_attention, backend=base)
            cells = (c.grid_h, c.grid_w, c.groups)
            shapes = {"query": (*cells, c.dk), "key": (*cells, c.dk), "value": (*cells, c.dv)}
            shapes["offsets"] = (*cells, c.samples, 2)
            out_shape = (c.batch, *cells, c.dv)
        # Offsets N(0, 0.5) cells: fractional, a few samples out of bounds.
        scale = {"offsets": 0.5}
        inputs = {n: scale.get(n, 1) * torch.randn(c.batch, *s) for n, s in shapes.items()}
        inputs = {n: t.to(dtype).requires_grad_() for n, t in inputs.items()}
        grad_out = torch.randn(out_shape).to(dtype)
    if variant == "compile":
        torch._dynamo.reset()  # a fresh compile per case, specialised on its shape
        forward = torch.compile(forward, backend=compiler, dynamic=False)
    return Workload(forward, inputs, params, grad_out, variant == "deterministic")
