"""saved_bytes counts what autograd keeps for backward, each storage once."""

from __future__ import annotations

import torch

from ddsm_triton.memory import saved_bytes


def test_saved_bytes_of_a_product_is_both_factors() -> None:
    x = torch.randn(1000, requires_grad=True)
    y = torch.randn(1000, requires_grad=True)
    saved = saved_bytes(lambda: x * y, exclude=[x, y])
    assert saved.total == 2 * 1000 * 4
    assert saved.tensors == 2
    assert saved.activations == 0  # both saved tensors are the excluded inputs


def test_saved_bytes_counts_a_storage_once() -> None:
    x = torch.randn(1000, requires_grad=True)
    # mul saves both operands, here the same tensor: one storage, counted once.
    assert saved_bytes(lambda: x * x).total == 1000 * 4
    # Two views of one buffer: one storage, counted whole (it is all kept alive).
    base = torch.randn(100, 10)
    a, b = base[:50].requires_grad_(), base[50:].requires_grad_()
    saved = saved_bytes(lambda: a * b)
    assert (saved.total, saved.tensors) == (100 * 10 * 4, 1)


def test_saved_bytes_counts_intermediates() -> None:
    x = torch.randn(256, requires_grad=True)
    # exp saves its output (a new 1 KiB tensor); sin saves its input, that output.
    saved = saved_bytes(lambda: x.exp().sin(), exclude=[x])
    assert saved.total == saved.activations == 256 * 4
