"""Input checks shared by the op and the modules (docs/semantics.md §3).

Every check raises before any kernel is launched, with a message that names the
argument, what was expected and what was given.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from ddsm_triton._numerics import autocast_available, compute_dtype

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "reference", "torch", "triton")
#: Every sample position must stay below this, so that it is exact in float32 (24-bit
#: significand) and every index derived from it fits in any integer type a backend uses.
POSITION_LIMIT = 2**24


def check_tensor(name: str, t: object, ndim: int) -> torch.Tensor:
    """A floating tensor of ``ndim`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense (torch.strided) tensor, got layout {t.layout}; "
            "call .to_dense() first"
        )
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {t.dtype}"
        )
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """A Python int (not bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_odd_square(name: str, n: int) -> int:
    """``n == k*k`` for an odd ``k``; returns ``k``."""
    k = math.isqrt(n) if n > 0 else 0
    if n <= 0 or k * k != n or k % 2 == 0:
        raise ValueError(f"{name} must be k*k for an odd k (1, 9, 25, 49, ...), got {n}")
    return k


def check_same(names: Sequence[str], tensors: Sequence[torch.Tensor], attr: str) -> None:
    """All tensors agree on ``attr`` ("device" or "dtype")."""
    first = getattr(tensors[0], attr)
    relation = "be on the same device as" if attr == "device" else "have the same dtype as"
    error = ValueError if attr == "device" else TypeError
    for name, t in zip(names[1:], tensors[1:], strict=True):
        if getattr(t, attr) != first:
            raise error(f"{name} must {relation} {names[0]} ({first}), got {getattr(t, attr)}")


def check_backend(backend: object) -> str:
    """A backend name; checked where it is set (the op's argument, a module's attribute)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend  # type: ignore[return-value]


def check_attention_inputs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    offsets: torch.Tensor,
    dilation: int,
    scale: float | None,
) -> float | None:
    """Validate the op's inputs; returns ``scale`` checked (None stays None: 1/sqrt(Dk))."""
    check_tensor("query", query, 5)
    check_tensor("key", key, 5)
    check_tensor("value", value, 5)
    check_tensor("offsets", offsets, 6)
    names = ("query", "key", "value", "offsets")
    tensors = (query, key, value, offsets)
    check_same(names, tensors, "device")
    check_same(names, tensors, "dtype")

    B, H, W, G, Dk = query.shape
    for name, size in zip(("H", "W", "G", "Dk"), (H, W, G, Dk), strict=True):
        if size <= 0:
            raise ValueError(f"query must have positive {name}, got shape {tuple(query.shape)}")
    if key.shape != query.shape:
        raise ValueError(
            f"key must have the shape of query (B, H, W, G, Dk) = {tuple(query.shape)}, "
            f"got {tuple(key.shape)}"
        )
    if value.shape[:4] != query.shape[:4] or value.shape[4] <= 0:
        raise ValueError(
            f"value must have shape (B, H, W, G, Dv) = {(B, H, W, G)} + (Dv > 0,), "
            f"got {tuple(value.shape)}"
        )
    if offsets.shape[:4] != query.shape[:4] or offsets.shape[5] != 2:
        raise ValueError(
            f"offsets must have shape (B, H, W, G, N, 2) = {(B, H, W, G)} + (N, 2), "
            f"got {tuple(offsets.shape)}"
        )
    k = check_odd_square("offsets.shape[4] (N, the number of samples)", offsets.shape[4])
    check_dilation(dilation, k, H, W)
    return None if scale is None else check_scale(scale, query.dtype)


def check_dilation(dilation: object, kernel_size: int, height: int, width: int) -> int:
    """A positive int small enough that no sample position or index can overflow.

    The base window reaches ``(k-1)/2 * dilation`` cells from its centre; with the
    map's extent added, that must stay below 2**24 (``POSITION_LIMIT``), where float32
    still holds every integer exactly and int32 index arithmetic cannot wrap. For
    k = 1 the window has no extent, and ``dilation`` itself is bounded the same way.
    """
    check_positive_int("dilation", dilation)
    reach = dilation * max(1, (kernel_size - 1) // 2) + max(height, width)
    if reach >= POSITION_LIMIT:
        raise ValueError(
            f"dilation must satisfy dilation * max(1, (k-1)/2) + max(H, W) < 2**24 = "
            f"{POSITION_LIMIT} (sample positions exact in float32), got dilation={dilation} "
            f"with k={kernel_size}, H={height}, W={width}"
        )
    return dilation  # type: ignore[return-value]


#: pool_size a gives Dk = a*a key channels per channel-grid cell, and the Triton kernels
#: hold a cell's whole key in one block: Triton's largest block is 2**20 elements
#: (TRITON_MAX_TENSOR_NUMEL), so a <= 2**10. A 1024 x 1024 descriptor already needs maps
#: of side >= 1024 (a 4096-pixel image at stride 4) to hold more than repeated pixels.
MAX_POOL_SIZE = 2**10


def check_channel_sizes(
    pool_size: object, channel_kernel_size: object, value_down: object, side: int
) -> None:
    """The channel branch's sizes, for an s x s channel grid (``side`` = s): positive
    ints within these bounds, checked before any parameter is allocated (the offset
    convolution alone has 18 * kc**2 * a**2 weights).

    * ``pool_size`` a <= ``MAX_POOL_SIZE`` (above).
    * ``channel_kernel_size`` kc <= 2s + 1: a sample two or more cells off the grid has
      all four corners outside it, so it samples zero and its offset gets zero gradient;
      the rings of a wider window start there for every channel, and stay there.
    * ``value_down`` < 2**24: a factor beyond the map's side pools it to 1 x 1
      (docs/semantics.md §2.3), which is defined for any input, so there is no
      bound on the input at forward; no feature map has a side of 2**24 (x_low's cannot:
      its sample positions must stay below ``POSITION_LIMIT``), so a larger factor is a
      mistake.
    """
    check_positive_int("pool_size", pool_size)
    check_positive_int("channel_kernel_size", channel_kernel_size)
    check_positive_int("value_down", value_down)
    bounds = (
        (
            "pool_size",
            pool_size,
            MAX_POOL_SIZE,
            "2**10: Dk = pool_size**2 must fit one Triton block of 2**20",
        ),
        (
            "channel_kernel_size",
            channel_kernel_size,
            2 * side + 1,
            f"2*s + 1 for the {side}x{side} channel grid (s = sqrt(dim)); wider rings never reach it",
        ),
        ("value_down", value_down, POSITION_LIMIT - 1, "2**24 - 1, beyond any feature map's side"),
    )
    for name, value, largest, why in bounds:
        if value > largest:
            raise ValueError(f"{name} must be <= {largest} ({why}), got {value}")


def check_scale(scale: object, dtype: torch.dtype) -> float:
    """A finite real number that is finite in the op's compute dtype too.

    The op computes in float64 for float64 inputs and in float32 otherwise; a scale
    beyond that type's range would become infinite there, and ``inf * 0`` is NaN.
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number (float) or None, got {type(scale).__name__}")
    try:
        value = float(scale)
    except OverflowError:  # an int beyond float64, e.g. 10**400
        raise ValueError(f"scale must be finite, got {scale}") from None
    if not math.isfinite(value):
        raise ValueError(f"scale must be finite, got {scale}")
    compute = compute_dtype(dtype)
    largest = torch.finfo(compute).max
    if abs(value) > largest:
        raise ValueError(
            f"scale must be at most {largest:.4g} in magnitude for {dtype} inputs "
            f"(computed in {compute}), got {value:g}"
        )
    return value


def check_feature_maps(
    x_low: torch.Tensor,
    x_high: torch.Tensor,
    low_channels: int,
    high_channels: int,
    parameter: torch.Tensor,
) -> None:
    """The module's inputs: (B, Cl, H, W) and (B, Ch, h, w) on one device and dtype,
    and those of the module's ``parameter`` (see ``check_module_inputs``)."""
    check_tensor("x_low", x_low, 4)
    check_tensor("x_high", x_high, 4)
    check_same(("x_low", "x_high"), (x_low, x_high), "device")
    if not autocast_enabled(x_low.device):  # under autocast the convolutions cast both
        check_same(("x_low", "x_high"), (x_low, x_high), "dtype")
    for name, x, channels in (("x_low", x_low, low_channels), ("x_high", x_high, high_channels)):
        if x.shape[1] != channels:
            raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] <= 0 or x.shape[3] <= 0:
            raise ValueError(f"{name} must have positive H and W, got {tuple(x.shape)}")
    if x_high.shape[0] != x_low.shape[0]:
        raise ValueError(
            f"x_high must have the batch size of x_low ({x_low.shape[0]}), got {x_high.shape[0]}"
        )
    check_module_inputs(("x_low", "x_high"), (x_low, x_high), parameter)


def autocast_enabled(device: torch.device) -> bool:
    """Whether ``torch.autocast`` is on for ``device``'s type (never, for types such
    as meta that autocast does not know)."""
    kind = device.type
    return autocast_available(kind) and torch.is_autocast_enabled(kind)


def check_bool(name: str, value: object) -> bool:
    """A Python bool: ``"no"``, ``0`` or ``None`` would silently mean something else."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_module_inputs(
    names: Sequence[str], tensors: Sequence[torch.Tensor], parameter: torch.Tensor
) -> None:
    """Module inputs (already through ``check_feature_maps``, which rejects non-dense
    layouts) live on the module's device and, outside ``torch.autocast``, have its
    parameters' dtype (a convolution would otherwise fail deep inside)."""
    for name, t in zip(names, tensors, strict=True):
        if t.device != parameter.device:
            raise ValueError(
                f"{name} must be on the module's device ({parameter.device}), got {t.device}; "
                "move the module or the input with .to(device)"
            )
        if t.dtype != parameter.dtype and not autocast_enabled(t.device):
            raise TypeError(
                f"{name} must have the module's dtype ({parameter.dtype}), got {t.dtype}; "
                "convert one with .to(dtype), or run under torch.autocast"
            )
