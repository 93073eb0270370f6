"""The public op: check once, pick a backend, dispatch (docs/semantics.md §1, §3)."""

from __future__ import annotations

import torch

from ddsm_triton._backend import resolve_backend, resolve_checked
from ddsm_triton._validation import check_attention_inputs, check_backend
from ddsm_triton.reference import dynamic_sample_attention as _reference_op
from ddsm_triton.torch_backend import dynamic_sample_attention as _torch_op

__all__ = ["dispatch", "dynamic_sample_attention", "resolve_backend"]


def dynamic_sample_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    *,
    dilation: int = 1,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Dynamic sample attention (docs/semantics.md §1), differentiable in all inputs.

    Every grid cell (b, i, j) and head g bilinearly samples the key and value
    maps at N = k*k learned positions around it (a k x k window of spacing
    ``dilation`` plus ``offsets``, in grid cells), softmaxes the scaled dot
    products of its query with the sampled keys, and returns the weighted sum of
    the sampled values.

    Args:
        query: (B, H, W, G, Dk).
        key: (B, H, W, G, Dk).
        value: (B, H, W, G, Dv).
        offsets: (B, H, W, G, N, 2), (dy, dx) in grid cells.
        dilation: spacing of the base window, in grid cells.
        scale: logit scale; default 1/sqrt(Dk).
        backend: "auto" (Triton on CUDA, "torch" elsewhere), "torch" (fast plain
            PyTorch on ``F.grid_sample``), "reference" (the readable ground truth)
            or "triton" (the fused kernels).

    Returns:
        (B, H, W, G, Dv), the dtype of ``value``.
    """
    scale = check_attention_inputs(query, key, value, offsets, dilation, scale)
    return dispatch(
        query, key, value, offsets, dilation=dilation, scale=scale, backend=check_backend(backend)
    )


def dispatch(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    *,
    dilation: int,
    scale: float | None,
    backend: str,
) -> torch.Tensor:
    """The op on ``backend`` for arguments that are already checked: by
    ``dynamic_sample_attention`` above, or by a module, which checks its own inputs
    once per call and its backend name when it is set. Shapes as above; ``scale``
    None means 1/sqrt(Dk)."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    chosen = resolve_checked(backend, query.device)
    if chosen == "reference":
        return _reference_op(query, key, value, offsets, dilation=dilation, scale=scale)
    if chosen == "torch":
        return _torch_op(query, key, value, offsets, dilation=dilation, scale=scale)
    from ddsm_triton.kernels import dynamic_sample_attention as triton_op

    return triton_op(query, key, value, offsets, dilation=dilation, scale=scale)
