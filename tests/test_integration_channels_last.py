"""channels_last feature maps: same results, and no needless copies on the way in.

A 1x1 (or 3x3) conv output in channels_last memory is (B, H, W, C) contiguous, so
the spatial branch's ``to_heads`` / ``to_offsets`` views hand the op contiguous
tensors that share the conv outputs' storage: the Triton wrapper's
``.contiguous()`` is then free. (The channel branch lays *channels* on its grid,
so it wants the default layout; its tensors are small pooled maps.)
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ddsm_triton.spatial
from ddsm_triton import DDSM, dynamic_sample_attention

BACKENDS = ["reference", "torch", "triton"]
CL = torch.channels_last


def _layer(backend: str) -> DDSM:
    layer = DDSM(8, 12, dim=16, groups=2, pool_size=2, backend=backend)
    with torch.no_grad():
        layer.spatial.offset.weight.normal_(0, 0.2)
        layer.channel.offset.weight.normal_(0, 0.2)
    return layer


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_matches_default_layout(backend: str) -> None:
    layer = _layer(backend)
    x_low, x_high = torch.randn(1, 8, 8, 8), torch.randn(1, 12, 4, 4)
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
    assert y1.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a1, a0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b1, b0, rtol=1e-4, atol=1e-5)
    for p, q in zip(g0, g1, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def _record_spatial(layer: DDSM, monkeypatch: pytest.MonkeyPatch):
    """Hooks recording the spatial convs' outputs, the op's inputs and output, and
    the output projection's input."""
    record: dict[str, torch.Tensor] = {}
    for name in ("query", "key", "value", "offset"):
        conv = getattr(layer.spatial, name)
        conv.register_forward_hook(lambda m, i, o, name=name: record.__setitem__(name, o))
    layer.spatial.proj.register_forward_pre_hook(lambda m, i: record.__setitem__("proj_in", i[0]))

    def spy(*tensors: torch.Tensor, **kwargs: object) -> torch.Tensor:
        for name, t in zip(("op_query", "op_key", "op_value", "op_offsets"), tensors, strict=True):
            record[name] = t
        record["op_out"] = dynamic_sample_attention(*tensors, **kwargs)
        return record["op_out"]

    monkeypatch.setattr(ddsm_triton.spatial, "dynamic_sample_attention", spy)
    return record


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_op_inputs_are_free_views_of_channels_last_conv_outputs(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _layer(backend).to(memory_format=CL)
    record = _record_spatial(layer, monkeypatch)
    layer(
        torch.randn(1, 8, 8, 8).to(memory_format=CL), torch.randn(1, 12, 4, 4).to(memory_format=CL)
    )
    for name in ("query", "key", "value", "offset"):
        conv_out = record[name]
        op_in = record["op_offsets" if name == "offset" else f"op_{name}"]
        assert conv_out.is_contiguous(memory_format=CL), f"{name} conv output not channels_last"
        assert op_in.is_contiguous(), f"op {name} input is not contiguous: a copy would follow"
        assert op_in.data_ptr() == conv_out.data_ptr(), f"op {name} input is a copy"
    # And back: the op's (B, H, W, G, D) output is the projection's channels_last input.
    assert record["proj_in"].is_contiguous(memory_format=CL)
    assert record["proj_in"].data_ptr() == record["op_out"].data_ptr()


class _CopyLog(TorchDispatchMode):
    """Logs every aten copy and the inputs of every ddsm:: op."""

    COPIES = ("aten::clone", "aten::_to_copy", "aten::copy_", "aten::contiguous")

    def __init__(self) -> None:
        super().__init__()
        self.copied: list[tuple[str, int]] = []
        self.ddsm_inputs: list[tuple[str, list[int]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in self.COPIES:
            self.copied.append((name, args[0].data_ptr()))
        elif name.startswith("ddsm::"):
            ptrs = [a.data_ptr() for a in args if isinstance(a, torch.Tensor)]
            self.ddsm_inputs.append((name, ptrs))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["triton"])
def test_triton_path_hands_conv_outputs_to_the_kernel_without_copies(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _layer(backend).to(memory_format=CL)
    record = _record_spatial(layer, monkeypatch)
    x_low = torch.randn(1, 8, 8, 8).to(memory_format=CL)
    x_high = torch.randn(1, 12, 4, 4).to(memory_format=CL)
    with _CopyLog() as log:
        layer(x_low, x_high)
    conv_ptrs = [record[name].data_ptr() for name in ("query", "key", "value", "offset")]
    copied = {ptr for _, ptr in log.copied}
    assert not copied & set(conv_ptrs), f"a spatial conv output was copied: {log.copied}"
    forward_calls = [ptrs for name, ptrs in log.ddsm_inputs if "forward" in name]
    assert forward_calls, f"no ddsm:: forward op ran: {log.ddsm_inputs}"
    assert forward_calls[0][:4] == conv_ptrs  # the spatial branch's call comes first
