"""Fused Triton kernels of ddsm_triton.

``dynamic_sample_attention`` is the entry point ``ddsm_triton.dynamic_sample_attention``
calls for ``backend="triton"``; importing this package registers the ``ddsm::dsa_forward``
and ``ddsm::dsa_backward`` custom ops. Set ``TRITON_INTERPRET=1`` before importing it
to run the kernels on CPU tensors.
"""

from ddsm_triton._backend import check_interpreter_numpy

from .dynamic_sample_attention import (
    CONFIGS,
    INTERPRETER_CONFIGS,
    KERNEL_VARIANTS,
    KernelVariant,
    dynamic_sample_attention,
    first_call_launches,
    launch_plan,
)

__all__ = [
    "CONFIGS",
    "INTERPRETER_CONFIGS",
    "KERNEL_VARIANTS",
    "KernelVariant",
    "dynamic_sample_attention",
    "first_call_launches",
    "launch_plan",
]

check_interpreter_numpy()  # a clear error, not a TypeError deep in Triton at the first launch
