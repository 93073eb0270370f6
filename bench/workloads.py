"""Runnable workloads: a case's inputs plus one implementation's forward.

Implementations ("impls"):

* ``eager``: the pure-PyTorch reference, ``ddsm_triton.reference``.
* ``compiled``: ``torch.compile`` of that same reference.
* ``torch``: the ``F.grid_sample`` backend (``backend="torch"``), the fastest plain
  PyTorch a user would write (MSDeformAttn's PyTorch path does the same).
* ``triton``: the fused Triton kernels (``backend="triton"``).

Every impl of a case is built from the same seed, so the inputs, weights and
incoming gradient are identical across impls and their results can be compared.
"""

from __future__ import annotations

import contextlib
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .configs import CHANNEL_KERNEL, POOL_SIZE, VALUE_DOWN, Case

IMPLS = ("eager", "compiled", "torch", "triton")
#: The op backend behind each impl (``compiled`` compiles the reference).
BACKEND_OF = {"eager": "reference", "compiled": "reference", "torch": "torch", "triton": "triton"}


@dataclass
class Workload:
    """A forward callable and everything it reads.

    Attributes:
        forward: called as ``forward(*inputs)``; returns one tensor.
        input_names: names of the positional inputs, e.g. ("query", "key", ...).
        input_sets: one or more copies of the inputs (leaf tensors requiring grad).
            On a GPU several copies are rotated so that timed calls read from DRAM,
            not from an L2 cache warmed by the previous call.
        grad_out: the incoming gradient for backward (random, never zeros).
        params: named parameters (module cases), which receive gradients too.
    """

    forward: Callable[..., torch.Tensor]
    input_names: tuple[str, ...]
    input_sets: list[tuple[torch.Tensor, ...]]
    grad_out: torch.Tensor
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    def run(self, i: int = 0) -> torch.Tensor:
        """Forward on input set ``i`` (autograd records the graph, as in training)."""
        return self.forward(*self.input_sets[i])

    def run_backward(self, i: int = 0) -> None:
        """Forward and backward on input set ``i``."""
        self.run(i).backward(self.grad_out)

    def leaves(self) -> list[torch.Tensor]:
        """Every tensor that receives a gradient: all input sets and the parameters."""
        return [t for inputs in self.input_sets for t in inputs] + list(self.params.values())

    def clear_grads(self) -> None:
        for t in self.leaves():
            t.grad = None

    def results(self) -> dict[str, torch.Tensor | None]:
        """Output and every gradient after one forward+backward on set 0, by name."""
        self.clear_grads()
        out = self.run(0)
        out.backward(self.grad_out)
        named = {"out": out.detach()}
        named.update(
            {f"grad {n}": t.grad for n, t in zip(self.input_names, self.input_sets[0], strict=True)}
        )
        named.update({f"grad {n}": p.grad for n, p in self.params.items()})
        self.clear_grads()
        return named


def seed_for(case: Case) -> int:
    """A seed that depends on the case's shape only, identical for every impl."""
    return zlib.crc32(repr(case.key()).encode())


def _op_inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
    """query, key, value, offsets of the core op, random and never all-zero.

    Offsets are N(0, 0.5) grid cells: fractional, mostly inside the window, some
    samples out of bounds at the border, as a trained layer produces.
    """
    cells = (case.batch, case.grid_h, case.grid_w, case.groups)
    dtype = case.torch_dtype
    q = torch.randn(*cells, case.dk, device=device)
    k = torch.randn(*cells, case.dk, device=device)
    v = torch.randn(*cells, case.dv, device=device)
    off = 0.5 * torch.randn(*cells, case.samples, 2, device=device)
    return tuple(t.to(dtype).requires_grad_() for t in (q, k, v, off))


def build_module(case: Case, device: torch.device) -> nn.Module:
    """A DDSM layer for ``case`` (Cl = Ch = dim), weights drawn from the current seed.

    The offset convolutions are zero-initialised in DDSM (a fresh layer samples the
    regular grid, at integer positions); here they get small random weights so
    the benchmark sees fractional, learned-looking offsets.
    """
    from ddsm_triton import DDSM

    # Parameters are created directly on the device and in the dtype, rather than
    # moved with ``.to()``: under FakeTensorMode ``.to()`` must swap parameters,
    # which fails, and creating in place is cheaper anyway.
    with torch.device(device), _default_dtype(case.torch_dtype):
        layer = DDSM(
            case.dim,
            case.dim,
            dim=case.dim,
            kernel_size=case.kernel_size,
            groups=case.groups,
            pool_size=POOL_SIZE,
            channel_kernel_size=CHANNEL_KERNEL,
            value_down=VALUE_DOWN,
            backend="reference",
        )
    with torch.no_grad():
        for conv in (layer.spatial.offset, layer.channel.offset):
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(std=0.5 / math.sqrt(fan_in))
            conv.bias.normal_(std=0.1)
    # Older torch versions reject half default dtypes; convert afterwards there.
    return layer.to(dtype=case.torch_dtype) if _param_dtype(layer) != case.torch_dtype else layer


def _param_dtype(layer: nn.Module) -> torch.dtype:
    return next(layer.parameters()).dtype


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """Temporarily make ``dtype`` the default for new floating tensors (if supported)."""
    old = torch.get_default_dtype()
    with contextlib.suppress(TypeError, RuntimeError):  # the caller falls back to .to()
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _module_inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
    """x_low (B, dim, H, W) and x_high (B, dim, H/2, W/2)."""
    dtype = case.torch_dtype
    x_low = torch.randn(case.batch, case.dim, case.map_h, case.map_w, device=device)
    x_high = torch.randn(case.batch, case.dim, *case.high_hw, device=device)
    return tuple(t.to(dtype).requires_grad_() for t in (x_low, x_high))


def input_set_bytes(case: Case) -> int:
    """Bytes of one input set (to size the rotation against the L2 cache)."""
    elem = torch.empty((), dtype=case.torch_dtype).element_size()
    if case.kind == "module":
        high_h, high_w = case.high_hw
        return elem * case.batch * case.dim * (case.map_h * case.map_w + high_h * high_w)
    cells = case.batch * case.grid_h * case.grid_w * case.groups
    return elem * cells * (2 * case.dk + case.dv + 2 * case.samples)


def output_shape(case: Case) -> tuple[int, ...]:
    """Shape of the forward's result: (B, H, W, G, Dv) for the op, x_low's for the module."""
    if case.kind == "module":
        return (case.batch, case.dim, case.map_h, case.map_w)
    return (case.batch, case.grid_h, case.grid_w, case.groups, case.dv)


def reference_op(query, key, value, offsets):
    """The eager reference (dilation 1, default scale), as the compiled peer sees it."""
    from ddsm_triton.reference import dynamic_sample_attention

    return dynamic_sample_attention(query, key, value, offsets, dilation=1)


def public_op(backend: str) -> Callable[..., torch.Tensor]:
    """The public op on ``backend`` (validation included, as users call it)."""
    from ddsm_triton import dynamic_sample_attention

    def op(query, key, value, offsets):
        return dynamic_sample_attention(query, key, value, offsets, dilation=1, backend=backend)

    op.__name__ = f"{backend}_op"
    return op


def build(
    case: Case,
    impl: str,
    device: torch.device,
    *,
    sets: int = 1,
    compile_backend: str = "inductor",
) -> Workload:
    """The workload of ``impl`` on ``case``: inputs (``sets`` copies) and forward.

    Works inside ``FakeTensorMode`` too (for eager, torch and triton), which is how saved
    bytes are measured at sizes that cannot run.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    torch.manual_seed(seed_for(case))
    make_inputs = _module_inputs if case.kind == "module" else _op_inputs
    params: dict[str, torch.Tensor] = {}
    if case.kind == "module":
        layer = build_module(case, device)
        layer.backend = BACKEND_OF[impl]
        params = dict(layer.named_parameters())
        forward: Callable[..., torch.Tensor] = layer
        names: tuple[str, ...] = ("x_low", "x_high")
    else:
        forward = reference_op if BACKEND_OF[impl] == "reference" else public_op(BACKEND_OF[impl])
        names = ("query", "key", "value", "offsets")
    input_sets = [make_inputs(case, device) for _ in range(sets)]
    grad_out = torch.randn(output_shape(case), device=device).to(case.torch_dtype)
    if impl == "compiled":
        # A fresh compile per case: dynamic=False specialises on the shape, as a
        # training job with a fixed crop size would, and a reset keeps Dynamo's
        # recompile limit from turning later cases into silent eager fallbacks.
        torch._dynamo.reset()
        forward = torch.compile(forward, backend=compile_backend, dynamic=False)
    return Workload(forward, names, input_sets, grad_out, params)


def triton_availability(cuda: bool) -> tuple[bool, str]:
    """Whether the Triton kernels can run here, and if not, why (one line)."""
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return False, "no CUDA device and TRITON_INTERPRET is not 1"
    try:
        from ddsm_triton.kernels import dynamic_sample_attention  # noqa: F401
    except Exception as err:  # any failure means "not available", reported verbatim
        return False, f"ddsm_triton.kernels is not usable yet ({type(err).__name__}: {err})"
    return True, ""
