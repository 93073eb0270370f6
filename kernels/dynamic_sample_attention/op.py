"""Host side: the launches of one forward and one backward, the ``ddsm::dsa_forward`` /
``ddsm::dsa_backward`` custom ops with their autograd, and the public entry point.

Narrow values (``Dv`` up to ``MAX_BLOCK_D``) take one kernel each way. Wide values
take ``logits_fwd_kernel`` then ``wide_values_kernel`` forward, and backward the logits
again, the Dv-split value side, then ``attention_bwd_kernel(VALUE_SUMS=True)``. The
backward is deterministic (no atomics, ``deterministic.py``) exactly when
``torch.are_deterministic_algorithms_enabled()``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton

from ddsm_triton._numerics import compute_dtype

from .backward import attention_bwd_kernel
from .configs import CONFIGS, INTERPRETER_CONFIGS, tuning_bucket, wide
from .deterministic import entry_dtype, map_gradients
from .forward import attention_fwd_kernel, logits_fwd_kernel
from .wide import wide_values_kernel


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer every element of which a kernel must write. With DDSM_POISON_OUTPUTS=1
    it starts as NaN (integers: 0, which sends a forgotten entry, with its NaN
    coefficients, to map row 0), so an unwritten element shows."""
    if os.environ.get("DDSM_POISON_OUTPUTS", "0") == "1":
        poison = float("nan") if dtype.is_floating_point else 0
        return torch.full(shape, poison, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class Dims:
    """Sizes of one call: P cells on an (H, W) grid of G heads, widths, window side."""

    P: int
    H: int
    W: int
    G: int
    DK: int
    DV: int
    KSIZE: int

    @staticmethod
    def of(query: torch.Tensor, value: torch.Tensor, offsets: torch.Tensor) -> Dims:
        B, H, W, G, DK = query.shape
        P = B * H * W * G
        if P >= 2**31:  # cell coordinates are computed in 32 bits (bilinear.cell_tile)
            raise ValueError(
                f"query: expected fewer than 2**31 cells B*H*W*G, got {P} (shape "
                f"{tuple(query.shape)}); split the batch"
            )
        return Dims(P, H, W, G, DK, value.shape[-1], math.isqrt(offsets.shape[-2]))

    @property
    def N(self) -> int:
        return self.KSIZE * self.KSIZE

    def grid_args(self, dilation: int, *widths: int) -> dict:
        """The launch arguments every kernel takes: grid, window, tuning bucket."""
        sizes = {"P": self.P, "H": self.H, "W": self.W, "G": self.G, "dilation": dilation}
        return {**sizes, "KSIZE": self.KSIZE, "BUCKET": tuning_bucket(self.P, *widths)}

    def cells_grid(self, meta: dict) -> tuple[int, ...]:
        return (triton.cdiv(self.P, meta["BLOCK_P"]),)


def _scale(scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The scale as a one-element tensor in the accumulation dtype: Triton passes Python
    floats as float32, which would round a float64 scale and overflow one above 3.4e38."""
    return torch.full((1,), scale, dtype=dtype, device=device)


def _logits(q, k, offsets, scale, dims: Dims, dilation: int):
    """Wide values: the (P, N) logits and (P,) log-sum-exp, values untouched."""
    logits = new_output((dims.P, dims.N), scale.dtype, q.device)
    lse = new_output((dims.P,), scale.dtype, q.device)
    logits_fwd_kernel[dims.cells_grid](
        q_ptr=q, k_ptr=k, offsets_ptr=offsets, scale_ptr=scale, logits_ptr=logits,
        lse_ptr=lse, DK=dims.DK, **dims.grid_args(dilation, dims.DK),
    )  # fmt: skip
    return logits, lse


def _wide_grid(dims: Dims, tiles: list[int]):
    """Grid of the Dv-split kernel; records the channel tiles it launched."""

    def grid(meta: dict) -> tuple[int, int]:
        tiles.append(triton.cdiv(dims.DV, meta["BLOCK_DV"]))
        return triton.cdiv(dims.P, meta["BLOCK_P"]), tiles[-1]

    return grid


def forward(query, key, value, offsets, dilation: int, scale: float):
    """``out`` (B, H, W, G, Dv) and the log-sum-exp (B, H, W, G), accumulation dtype.
    Inputs are contiguous (``dynamic_sample_attention`` makes them so)."""
    dims = Dims.of(query, value, offsets)
    acc = compute_dtype(query.dtype)
    out = new_output(value.shape, value.dtype, value.device)
    if dims.P == 0:
        return out, new_output(query.shape[:4], acc, query.device)
    s = _scale(scale, acc, query.device)
    if wide(dims.DV):
        logits, lse = _logits(query, key, offsets, s, dims, dilation)
        wide_values_kernel[_wide_grid(dims, [])](
            v_ptr=value, offsets_ptr=offsets, logits_ptr=logits, lse_ptr=lse, dout_ptr=None,
            out_ptr=out, dvalue_ptr=None, value_dots_ptr=None, DV=dims.DV,
            BACKWARD=False, ATOMICS=False, **dims.grid_args(dilation, dims.DV),
        )  # fmt: skip
    else:
        lse = new_output((dims.P,), acc, query.device)
        attention_fwd_kernel[dims.cells_grid](
            q_ptr=query, k_ptr=key, v_ptr=value, offsets_ptr=offsets, scale_ptr=s,
            out_ptr=out, lse_ptr=lse, DK=dims.DK, DV=dims.DV,
            **dims.grid_args(dilation, dims.DK, dims.DV),
        )  # fmt: skip
    return out, lse.view(query.shape[:4])


def _wide_value_dots(query, key, value, offsets, dout, s, dims: Dims, dilation, dvalue):
    """Wide values, backward value side: the dvalue atomics into ``dvalue`` (None in
    deterministic mode) and the per-sample value dots (P, N, 3), summed over the
    channel tiles in a fixed order."""
    logits, lse = _logits(query, key, offsets, s, dims, dilation)
    smallest = min(
        c.kwargs["BLOCK_DV"] for c in [*CONFIGS["dsa_wide"], INTERPRETER_CONFIGS["dsa_wide"]]
    )
    partial = new_output((triton.cdiv(dims.DV, smallest), dims.P, dims.N, 3), s.dtype, value.device)
    tiles: list[int] = []
    wide_values_kernel[_wide_grid(dims, tiles)](
        v_ptr=value, offsets_ptr=offsets, logits_ptr=logits, lse_ptr=lse, dout_ptr=dout,
        out_ptr=None, dvalue_ptr=dvalue, value_dots_ptr=partial, DV=dims.DV,
        BACKWARD=True, ATOMICS=dvalue is not None, **dims.grid_args(dilation, dims.DV),
    )  # fmt: skip
    return partial[: tiles[-1]].sum(0)


def backward(
    dout, query, key, value, offsets, lse, dilation: int, scale: float, deterministic: bool
):
    """Gradients for query, key, value and offsets; inputs contiguous."""
    dims = Dims.of(query, value, offsets)
    dev, acc = query.device, lse.dtype
    dq = new_output(query.shape, query.dtype, dev)
    doffsets = new_output(offsets.shape, offsets.dtype, dev)
    if dims.P == 0:
        return dq, torch.zeros_like(key), torch.zeros_like(value), doffsets
    s = _scale(scale, acc, dev)
    P, N = dims.P, dims.N
    entry_rows = entry_weights = dkey = dvalue = None
    if deterministic:
        entry_rows = new_output((P, N, 4), entry_dtype(4 * N * P), dev)
        entry_weights = new_output((P, N, 4, 2), acc, dev)
    else:  # atomics accumulate in the accumulation dtype (bf16 atomics do not exist)
        dkey = torch.zeros(key.shape, dtype=acc, device=dev)
        dvalue = torch.zeros(value.shape, dtype=acc, device=dev)
    value_sums = wide(dims.DV)
    value_dots = None
    if value_sums:
        value_dots = _wide_value_dots(query, key, value, offsets, dout, s, dims, dilation, dvalue)
    attention_bwd_kernel[dims.cells_grid](
        q_ptr=query, k_ptr=key, v_ptr=None if value_sums else value, offsets_ptr=offsets,
        scale_ptr=s, lse_ptr=lse, dout_ptr=None if value_sums else dout,
        value_dots_ptr=value_dots, dq_ptr=dq, doffsets_ptr=doffsets, dkey_ptr=dkey,
        dvalue_ptr=None if value_sums else dvalue, entry_rows_ptr=entry_rows,
        entry_weights_ptr=entry_weights, DK=dims.DK, DV=dims.DV, VALUE_SUMS=value_sums,
        ATOMICS=not deterministic, **dims.grid_args(dilation, dims.DK, dims.DV),
    )  # fmt: skip
    if not deterministic:
        return dq, dkey.to(key.dtype), dvalue.to(value.dtype), doffsets
    maps = new_output(key.shape, key.dtype, dev), new_output(value.shape, value.dtype, dev)
    map_gradients(entry_rows, entry_weights, (query, dout), maps)
    return dq, *maps, doffsets


@torch.library.custom_op("ddsm::dsa_forward", mutates_args=())
def dsa_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    dilation: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``out`` (B, H, W, G, Dv) and the log-sum-exp (B, H, W, G), accumulation dtype."""
    return forward(query, key, value, offsets, dilation, scale)


@dsa_forward.register_fake
def _(query, key, value, offsets, dilation, scale):
    lse = query.new_empty(query.shape[:4], dtype=compute_dtype(query.dtype))
    return value.new_empty(value.shape), lse


@torch.library.custom_op("ddsm::dsa_backward", mutates_args=())
def dsa_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    lse: torch.Tensor,
    dilation: int,
    scale: float,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``dsa_forward``'s ``out`` for query, key, value and offsets. The
    forward output is not needed: Delta = <dO, out> is rebuilt as sum_n A_n dA_n."""
    dout = grad_out.contiguous()  # the one input autograd did not save contiguous
    return backward(dout, query, key, value, offsets, lse, dilation, scale, deterministic)


@dsa_backward.register_fake
def _(grad_out, query, key, value, offsets, lse, dilation, scale, deterministic):
    # Contiguous, like the real gradients: empty_like would copy the strides.
    return tuple(t.new_empty(t.shape) for t in (query, key, value, offsets))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, offsets, dilation, scale = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(query, key, value, offsets, output[1])
    ctx.dilation, ctx.scale = dilation, scale


def _backward_rule(ctx, grad_out, grad_lse):
    deterministic = torch.are_deterministic_algorithms_enabled()
    grads = torch.ops.ddsm.dsa_backward(
        grad_out, *ctx.saved_tensors, ctx.dilation, ctx.scale, deterministic
    )
    return (*grads, None, None)


dsa_forward.register_autograd(_backward_rule, setup_context=_setup_context)


def dynamic_sample_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    dilation: int,
    scale: float,
) -> torch.Tensor:
    """Triton dynamic sample attention (docs/semantics.md §1), differentiable
    in all inputs.

    Args:
        query: (B, H, W, G, Dk). key: (B, H, W, G, Dk). value: (B, H, W, G, Dv).
        offsets: (B, H, W, G, N, 2), (dy, dx) in grid cells, N = k*k for odd k.
        dilation: spacing of the k x k base window, in grid cells.
        scale: logit scale (the caller resolves the 1/sqrt(Dk) default); a float64
            scale reaches float64 kernels exactly.

    Inputs share one dtype (float32, float16, bfloat16 or float64) and one device:
    CUDA, or CPU under ``TRITON_INTERPRET=1``. Any strides are accepted: inputs are
    made contiguous here, the one place, so that autograd saves the very tensors the
    kernels read.

    Returns:
        out: (B, H, W, G, Dv) in the value dtype.
    """
    inputs = (t.contiguous() for t in (query, key, value, offsets))
    return torch.ops.ddsm.dsa_forward(*inputs, int(dilation), float(scale))[0]
