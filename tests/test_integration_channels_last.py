"""Memory formats: same results for NCHW and channels_last, and no copies on the way in.

Both branches write their projections in the op's layout with batched matmuls
(spatial: a row per pixel, channel: a row per channel), whatever the input's memory
format, so the four tensors handed to the op are contiguous views and the kernel
wrapper's ``.contiguous()`` is free, in forward and in backward (the op saves its
inputs, and the gradient reaching it comes out of a matmul).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from utils import BACKENDS, features, randomise_offsets, replace_op

from ddsm_triton import DDSM
from ddsm_triton.ops import dispatch

CL = torch.channels_last
FORMATS = [
    pytest.param(torch.contiguous_format, id="nchw"),
    pytest.param(CL, id="channels_last"),
]


def _layer(backend: str) -> DDSM:
    return randomise_offsets(DDSM(8, 12, dim=16, groups=2, pool_size=2, backend=backend))


def _inputs(memory_format: torch.memory_format, batch: int = 1):
    x_low, x_high = features(batch, 8, 12, 8, 8, 4, 4, memory_format=memory_format)
    return x_low.requires_grad_(), x_high.requires_grad_()


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_matches_default_layout(backend: str) -> None:
    layer = _layer(backend)
    x_low, x_high = features(1, 8, 12, 8, 8, 4, 4)
    weight = torch.randn(1, 8, 8, 8)
    results = []
    for fmt in (torch.contiguous_format, CL):
        layer.to(memory_format=fmt)
        layer.zero_grad(set_to_none=True)
        a = x_low.clone(memory_format=fmt).requires_grad_()
        b = x_high.clone(memory_format=fmt).requires_grad_()
        y = layer(a, b)
        (y * weight).sum().backward()
        results.append((y, a.grad, b.grad, [p.grad.clone() for p in layer.parameters()]))
    (y0, a0, b0, g0), (y1, a1, b1, g1) = results
    assert y0.is_contiguous() and y1.is_contiguous(memory_format=CL)  # y follows x_low
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a1, a0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b1, b0, rtol=1e-4, atol=1e-5)
    for p, q in zip(g0, g1, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def _spy_on_the_op(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, bool]]:
    """Replace the op in both branches by a pass-through that records, per call,
    whether each input and the gradient of its output are contiguous."""
    calls: list[dict[str, bool]] = []

    def spy(*tensors: torch.Tensor, **kwargs: object) -> torch.Tensor:
        names = ("query", "key", "value", "offsets")
        call = {name: t.is_contiguous() for name, t in zip(names, tensors, strict=True)}
        calls.append(call)
        out = dispatch(*tensors, **kwargs)
        out.register_hook(lambda grad: call.__setitem__("grad_out", grad.is_contiguous()))
        return out

    replace_op(monkeypatch, spy)
    return calls


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_inputs_and_output_gradient_are_contiguous(
    backend: str, memory_format: torch.memory_format, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_on_the_op(monkeypatch)
    layer = _layer(backend).to(memory_format=memory_format)
    layer(*_inputs(memory_format)).square().sum().backward()
    expected = dict.fromkeys(("query", "key", "value", "offsets", "grad_out"), True)
    assert calls == [expected, expected]  # spatial, then channel branch


class _CopyLog(TorchDispatchMode):
    """Logs the shape of every aten copy, and whether every tensor argument of every
    ddsm:: op (forward and backward) is contiguous."""

    COPIES = ("aten::clone", "aten::_to_copy", "aten::copy_", "aten::contiguous")

    def __init__(self) -> None:
        super().__init__()
        self.copied: list[tuple[str, tuple[int, ...]]] = []
        self.ddsm_args: list[tuple[str, list[bool]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in self.COPIES:
            self.copied.append((name, tuple(args[0].shape)))
        elif name.startswith("ddsm::"):
            flags = [a.is_contiguous() for a in args if isinstance(a, torch.Tensor)]
            self.ddsm_args.append((name, flags))
        return func(*args, **(kwargs or {}))


def _copies(layer: DDSM, memory_format: torch.memory_format, batch: int) -> _CopyLog:
    x_low, x_high = _inputs(memory_format, batch)
    layer.zero_grad(set_to_none=True)  # a first backward each time: .grad is created
    with _CopyLog() as log:
        layer(x_low, x_high).square().sum().backward()
    return log


@pytest.mark.interpreter
@pytest.mark.parametrize("memory_format", FORMATS)
def test_triton_path_copies_no_activation(memory_format: torch.memory_format) -> None:
    """Forward and backward on the Triton op: every tensor a kernel receives is
    contiguous (so its wrapper copies nothing), and the copies left in the layer are
    the same at batch 1 and batch 3, so none is of a feature map: they are
    parameter-sized (weight and gradient layouts) or the position embeddings."""
    layer = _layer("triton").to(memory_format=memory_format)
    one, three = _copies(layer, memory_format, 1), _copies(layer, memory_format, 3)
    names = [name for name, _ in three.ddsm_args]
    assert any("forward" in n for n in names) and any("backward" in n for n in names), names
    for name, flags in three.ddsm_args:
        assert all(flags), f"{name} received a non-contiguous tensor: {flags}"
    assert one.copied == three.copied, f"a copy scales with the batch: {three.copied}"
