"""Which backend runs a call, and where the Triton kernels can run (docs/semantics.md,
section 2, ``backend``). The one place that reads ``TRITON_INTERPRET``."""

from __future__ import annotations

import os

import torch

from ddsm_triton._validation import check_backend

__all__ = ["interpreting", "resolve_backend"]


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter in this process.

    ``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is decorated, so this is
    only meaningful if it held when ``ddsm_triton.kernels`` was imported; nothing in
    the library changes it afterwards.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` to "reference", "torch" or "triton" for tensors on ``device``.

    "auto" picks Triton for CUDA tensors and the grid_sample-based "torch" backend
    elsewhere. "triton" runs CUDA tensors when the kernels are compiled, and CPU
    tensors when they are interpreted (``TRITON_INTERPRET=1`` set before ddsm_triton's
    kernels are imported); anything else raises rather than silently falling back.
    On "meta" tensors every backend infers shapes (the Triton op has a fake
    implementation).
    """
    check_backend(backend)
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend != "triton" or device.type == "meta":
        return backend
    if device.type == "cuda" and interpreting():
        raise RuntimeError(
            "backend='triton' got CUDA tensors, but TRITON_INTERPRET=1 is set: the kernels "
            "were built for the CPU interpreter in this process. Unset TRITON_INTERPRET, or "
            "move the tensors to the CPU."
        )
    if device.type == "cpu" and not interpreting():
        raise RuntimeError(
            "backend='triton' needs CUDA tensors, got tensors on cpu. CPU tensors run in "
            "the Triton interpreter only when TRITON_INTERPRET=1 is set before "
            "ddsm_triton.kernels is imported; otherwise use backend='torch' or 'auto'."
        )
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"backend='triton' needs CUDA tensors, got tensors on {device}")
    return backend
