"""Which backend runs a call, and where the Triton kernels can run (docs/semantics.md
§2.5). The one place that reads ``TRITON_INTERPRET``.

A backend name is checked once, where it is set (the op's argument, a module's
``backend`` attribute); ``resolve_checked`` then maps a checked name to what runs.
"""

from __future__ import annotations

import os
import re

import torch

from ddsm_triton._validation import check_backend

__all__ = [
    "BackendAttribute",
    "check_interpreter_numpy",
    "interpreting",
    "resolve_backend",
    "resolve_checked",
]


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter in this process.

    ``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is decorated, so this is
    only meaningful if it held when ``ddsm_triton.kernels`` was imported; nothing in
    the library changes it afterwards.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_interpreter_numpy() -> None:
    """Raise if the Triton interpreter is on and cannot run with the installed NumPy.

    Before triton 3.7 the interpreter calls ``int()`` on one-element arrays, which
    NumPy 2.4 rejects (triton-lang/triton#9171): every kernel with a runtime loop bound
    would fail deep inside Triton. Called when ``ddsm_triton.kernels`` is imported.
    """
    if not interpreting():
        return
    import numpy
    import triton

    def major_minor(version: str) -> tuple[int, int]:
        major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
        return int(major), int(minor)

    if major_minor(triton.__version__) < (3, 7) and major_minor(numpy.__version__) >= (2, 4):
        raise RuntimeError(
            f"TRITON_INTERPRET=1: the Triton interpreter of triton {triton.__version__} "
            f"cannot run with numpy {numpy.__version__} (it needs numpy < 2.4 before "
            "triton 3.7). Install 'numpy<2.4' or triton >= 3.7, or unset TRITON_INTERPRET "
            "and run the kernels on a GPU."
        )


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` to "reference", "torch" or "triton" for tensors on ``device``
    (the public form of ``resolve_checked``: it checks the name first)."""
    return resolve_checked(check_backend(backend), device)


def resolve_checked(backend: str, device: torch.device) -> str:
    """Map a checked ``backend`` name to "reference", "torch" or "triton" for tensors on
    ``device``.

    "auto" picks Triton for CUDA tensors and the grid_sample-based "torch" backend
    elsewhere. "triton" runs CUDA tensors when the kernels are compiled, and CPU
    tensors when they are interpreted (``TRITON_INTERPRET=1`` set before ddsm_triton's
    kernels are imported); anything else raises rather than silently falling back.
    On "meta" tensors every backend infers shapes (the Triton op has a fake
    implementation).
    """
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


class BackendAttribute:
    """Mixin for modules: a ``backend`` attribute whose name is checked when it is set
    (at construction and on every later assignment), so that a call need not."""

    _backend: str

    @property
    def backend(self) -> str:
        """The backend name: "auto", "reference", "torch" or "triton" (docs/semantics.md
        §2.5)."""
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        self._backend = check_backend(backend)
