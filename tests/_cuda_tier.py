"""What the CUDA tier (tests/test_cuda_*.py, ``pytest -m cuda``) shares: its device, its
shapes (real on a GPU, tiny in the dry run) and the comparison with the reference.

The tier uses the public API only (``ddsm_triton.dynamic_sample_attention``, ``DDSM``,
``torch.ops.ddsm.*``), so it survives changes to the kernels' internals.

``DDSM_CUDA_DRY_RUN=1`` runs the same test code on CPU tensors under the Triton
interpreter with the tiny shapes: it checks the tier's logic on a machine without a GPU,
not the compiled kernels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from ddsm_triton import dynamic_sample_attention

DRY_RUN = os.environ.get("DDSM_CUDA_DRY_RUN") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not DRY_RUN else "cpu")
#: torch.compile backend of the compile test: inductor on the GPU; the dry run only
#: checks the test's plumbing, and inductor's CPU warm-up costs minutes on a small machine.
COMPILE_BACKEND = "aot_eager" if DRY_RUN else "inductor"

NAMES = ("out", "dquery", "dkey", "dvalue", "doffsets")

# (relative tolerance, absolute tolerance as a fraction of the largest reference
# magnitude) against the float64 reference on the same (rounded) inputs. Half types
# compute in float32 and round once on the store, as in the interpreter tests' table.
# float32 is looser than there: at real sizes positions reach ~130 cells, where float32
# rounds the fractional part (hence the bilinear weights) to ~1e-5, which the softmax
# and the corner differences amplify. A wrong index or a lost gradient errs by O(1).
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

#: A GPU grid counts as "several waves" with at least this many programs per SM.
PROGRAMS_PER_SM = 4
#: An upper bound on the cells one program handles (the largest BLOCK_P of any GPU
#: configuration is 64: D = 16 at 8 warps): sizing grids with it keeps them multi-wave.
CELLS_PER_PROGRAM = 64
#: Stands for "as many rows as make the grid several waves deep" (see ``resolve``).
WAVES = 0


@dataclass(frozen=True)
class Shape:
    """Core-op problem: query/key (B, H, W, G, Dk), value (B, H, W, G, Dv), offsets
    (B, H, W, G, k*k, 2); ``dilation`` in grid cells. ``H == WAVES`` is resolved on the
    device (``resolve``)."""

    B: int
    H: int
    W: int
    G: int
    Dk: int
    Dv: int
    k: int
    dilation: int = 1

    @property
    def cells(self) -> int:
        return self.B * self.H * self.W * self.G


def sms() -> int:
    """Streaming multiprocessors of the tier's GPU (1 in the dry run)."""
    return (
        torch.cuda.get_device_properties(DEVICE).multi_processor_count
        if DEVICE.type == "cuda"
        else 1
    )


def resolve(shape: Shape) -> Shape:
    """``shape`` with ``H == WAVES`` replaced by the rows that give every launch at least
    PROGRAMS_PER_SM programs per SM, whatever the GPU."""
    if shape.H != WAVES:
        return shape
    rows = math.ceil(PROGRAMS_PER_SM * sms() * CELLS_PER_PROGRAM / (shape.B * shape.W * shape.G))
    return replace(shape, H=rows)


def sized(real: Shape, tiny: Shape) -> Shape:
    """The shape of this run: ``real`` on the GPU, ``tiny`` in the dry run."""
    return resolve(tiny if DRY_RUN else real)


def make_inputs(
    shape: Shape, dtype: torch.dtype, *, spread: float = 1.5, device: torch.device = DEVICE
) -> list[torch.Tensor]:
    """Random query, key, value and offsets (leaves that require grad). Offsets are
    N(0, spread) + 0.37 cells, so positions sit off the integers, where offset gradients
    are one-sided, and some fall out of bounds."""
    s = shape
    cells = (s.B, s.H, s.W, s.G)
    tensors = [
        torch.randn(*cells, s.Dk, dtype=torch.float64, device=device),
        torch.randn(*cells, s.Dk, dtype=torch.float64, device=device),
        torch.randn(*cells, s.Dv, dtype=torch.float64, device=device),
        torch.randn(*cells, s.k * s.k, 2, dtype=torch.float64, device=device) * spread + 0.37,
    ]
    return [t.to(dtype).requires_grad_() for t in tensors]


def forward_backward(
    inputs: Sequence[torch.Tensor],
    grad_out: torch.Tensor,
    *,
    backend: str = "triton",
    dilation: int = 1,
    scale: float | None = None,
) -> list[torch.Tensor]:
    """``[out, dquery, dkey, dvalue, doffsets]`` of one forward and backward."""
    out = dynamic_sample_attention(*inputs, dilation=dilation, scale=scale, backend=backend)
    grads = torch.autograd.grad(out, list(inputs), grad_out)
    return [out.detach(), *grads]


def reference_results(
    inputs: Sequence[torch.Tensor], grad_out: torch.Tensor, *, dilation: int = 1, scale=None
) -> list[torch.Tensor]:
    """The reference in float64 on exactly the values of ``inputs`` and ``grad_out``."""
    exact = [t.detach().double().requires_grad_() for t in inputs]
    return forward_backward(
        exact, grad_out.double(), backend="reference", dilation=dilation, scale=scale
    )


def assert_close(
    got: Sequence[torch.Tensor],
    want: Sequence[torch.Tensor],
    dtype: torch.dtype,
    *,
    what: str = "",
) -> None:
    """Every result finite (so none was left unwritten) and within TOLERANCE[dtype]."""
    rtol, atol = TOLERANCE[dtype]
    for name, g, w in zip(NAMES, got, want, strict=True):
        label = f"{what} {name}".strip()
        assert g.shape == w.shape, f"{label}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{label}: non-finite (unwritten?) elements"
        scale = max(1.0, w.abs().max().item()) if w.numel() else 1.0
        torch.testing.assert_close(
            g.double(),
            w.double(),
            rtol=rtol,
            atol=atol * scale,
            msg=lambda m, label=label: f"{label}: {m}",
        )


def check_against_reference(
    inputs: Sequence[torch.Tensor], *, dilation: int = 1, scale: float | None = None
) -> list[torch.Tensor]:
    """Triton and the float64 reference, same inputs and upstream gradient, all five
    results compared; returns the Triton ones."""
    value = inputs[2]  # out has the value's shape
    grad_out = torch.randn(value.shape, dtype=torch.float64, device=value.device).to(value.dtype)
    got = forward_backward(inputs, grad_out, dilation=dilation, scale=scale)
    want = reference_results(inputs, grad_out, dilation=dilation, scale=scale)
    assert_close(got, want, inputs[0].dtype)
    assert all(t.dtype == inputs[0].dtype for t in got)
    return got


class DdsmOpCalls(TorchDispatchMode):
    """Records, per ``ddsm::`` op, its first call under this mode: (op, arguments with
    tensors cloned as passed, strides kept, keyword arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name  # "ddsm::dsa_forward"
        if name.startswith("ddsm::") and name not in self.calls:
            cloned = tree_map_only(torch.Tensor, lambda t: t.detach().clone(), args)
            self.calls[name] = (func, cloned, kwargs)
        return func(*args, **kwargs)
