"""torch.library.opcheck over every op registered in the "ddsm" namespace.

The sample arguments are whatever the public op actually passes: forward and
backward of ``dynamic_sample_attention(backend="triton")`` run under a dispatch
mode that records each ddsm:: call, and every registered op must show up there.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ddsm_triton import dynamic_sample_attention

pytestmark = pytest.mark.interpreter


def _registered_ddsm_ops() -> list[str]:
    try:
        import ddsm_triton.kernels  # noqa: F401  (registers the ops)
    except Exception:
        return []
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("ddsm::"))


OPS = _registered_ddsm_ops()
# "contiguous" inputs, and "nchw-views": the strided (B, H, W, G, D) views that
# DDSM's spatial branch makes of default-layout conv outputs.
LAYOUTS = ("contiguous", "nchw-views")
OP_PARAMS = [pytest.param(op, layout, id=f"{op}-{layout}") for op in OPS for layout in LAYOUTS] or [
    pytest.param(
        None,
        None,
        id="no-ddsm-ops-registered",
        marks=pytest.mark.xfail(reason="the Triton kernels (ddsm:: ops) have not landed yet"),
    )
]


class _CallLog(TorchDispatchMode):
    """Records the first call of each ddsm:: op (arguments cloned, strides kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("ddsm::") and name not in self.calls:
            clone = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a  # noqa: E731
            self.calls[name] = (func, tuple(map(clone, args)), dict(kwargs))
        return func(*args, **kwargs)


def _inputs(layout: str) -> list[torch.Tensor]:
    B, H, W, G = 1, 4, 5, 2
    shapes = [(G, 8), (G, 8), (G, 6), (G, 9, 2)]
    if layout == "contiguous":
        tensors = [torch.randn(B, H, W, *s) for s in shapes]
    else:  # (B, C, H, W) maps viewed as (B, H, W, G, ...), as to_heads/to_offsets do
        tensors = [
            torch.randn(B, math.prod(s), H, W).permute(0, 2, 3, 1).unflatten(-1, s) for s in shapes
        ]
        assert not any(t.is_contiguous() for t in tensors)
    tensors[3] = tensors[3] * 0.8
    return [t.detach().requires_grad_() for t in tensors]


@pytest.fixture(scope="module")
def recorded_calls() -> dict[str, dict[str, tuple]]:
    torch.manual_seed(0)
    calls = {}
    for layout in LAYOUTS:
        inputs = _inputs(layout)
        with _CallLog() as log:
            out = dynamic_sample_attention(*inputs, backend="triton")
            out.backward(torch.randn_like(out))
        calls[layout] = log.calls
    return calls


def test_every_registered_ddsm_op_is_exercised(recorded_calls: dict) -> None:
    if not OPS:
        pytest.xfail("the Triton kernels (ddsm:: ops) have not landed yet")
    for layout in LAYOUTS:
        assert set(recorded_calls[layout]) == set(OPS), layout


@pytest.mark.parametrize(("op_name", "layout"), OP_PARAMS)
def test_opcheck(op_name: str | None, layout: str | None, recorded_calls: dict) -> None:
    assert op_name is not None and layout is not None, "no ddsm:: op is registered"
    func, args, kwargs = recorded_calls[layout][op_name]
    if op_name.endswith("forward"):  # the autograd-facing op: inputs that require grad
        args = tuple(
            a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args
        )
    torch.library.opcheck(func, args, kwargs)
