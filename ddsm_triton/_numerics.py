"""Numerical conventions shared by every backend (docs/semantics.md §1).

A leaf module: it imports only torch, so the reference, the grid_sample backend, the
kernels and the input checks can all use it without importing each other.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_available", "autocast_off", "clamp_to_finite", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the op computes in: float64 stays float64, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The answer depends on the device type alone and never changes in a process, so
# torch.compile may take it as a constant, computed once when it traces the call:
# dynamo before torch 2.13 cannot trace the C function behind
# torch.amp.is_autocast_available (fullgraph compile fails on torch 2.7 and 2.11).
# This keeps the exact answer both in eager mode and compiled, where a list of known
# device types would have to follow torch's.
def autocast_available(device_type: str) -> bool:
    """Whether ``torch.autocast`` accepts ``device_type`` (it rejects some, e.g. "meta",
    even to disable it)."""
    return torch.amp.is_autocast_available(device_type)


# What ``torch.compiler.assume_constant_result`` does (torch 2.8 to 2.13: it sets this
# attribute and nothing else), without calling it: it imports torch._dynamo, and that
# imports triton, which must not happen before a user sets TRITON_INTERPRET (triton's
# own jit helpers read it when triton is imported). Should a future torch mark constants
# differently, torch.compile falls back to tracing the function, which torch 2.13 can.
autocast_available._dynamo_marked_constant = True  # type: ignore[attr-defined]


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off on ``device``'s type, where that type has autocast at all."""
    if not autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def clamp_to_finite(logits: torch.Tensor) -> torch.Tensor:
    """Clamp logits to the finite range of their dtype.

    ``scale * <q, K_n>`` can overflow to +-inf for a large finite scale (1e38 in
    float32), and a softmax over infinities is NaN. Clamping to +-max keeps every
    logit finite: the softmax then weighs the largest logits equally, which is
    the limit of the finite computation. The clamped logits get zero gradient.
    """
    largest = torch.finfo(logits.dtype).max
    return logits.clamp(-largest, largest)
