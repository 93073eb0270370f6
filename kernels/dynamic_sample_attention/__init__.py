"""Dynamic sample attention (docs/semantics.md §1) as fused Triton kernels.

Every cell attends over ``N = k*k`` bilinearly sampled keys and values:

    l_n = clamp(scale * <q, K_n>, -M, M),   A = softmax_n(l),   out = sum_n A_n V_n.

Files, as in Liger-Kernel's and FLA's ``ops/<op>/``:

* ``configs.py``: launch configurations, block shapes, how each kernel is tuned;
* ``forward.py``: the forward kernel, and the logits-only one for wide values;
* ``backward.py``: the backward kernel (narrow values, or wide values' key side);
* ``wide.py``: the value side of wide values, split over channel tiles;
* ``deterministic.py``: the backward's atomic-free map-gradient reduction;
* ``op.py``: host launches, the ``ddsm::`` custom ops, autograd, the entry point;
* ``variants.py``: ``KERNEL_VARIANTS`` (what can be launched) and the launch plan.
"""

from .configs import CONFIGS, INTERPRETER_CONFIGS, MAX_BLOCK_D, MIN_BLOCK_D, block_sizes, wide
from .op import dynamic_sample_attention, new_output
from .variants import KERNEL_VARIANTS, KernelVariant, Launch, first_call_launches, launch_plan

__all__ = [
    "CONFIGS",
    "INTERPRETER_CONFIGS",
    "KERNEL_VARIANTS",
    "MAX_BLOCK_D",
    "MIN_BLOCK_D",
    "KernelVariant",
    "Launch",
    "block_sizes",
    "dynamic_sample_attention",
    "first_call_launches",
    "launch_plan",
    "new_output",
    "wide",
]
