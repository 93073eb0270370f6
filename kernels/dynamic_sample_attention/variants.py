"""What the library can launch: ``KERNEL_VARIANTS``, the one list the kernel report
compiles and the traffic meter runs, and ``launch_plan``, the launches of one forward
and backward with the configurations each may compile (``bench.kernel_report
--first-call`` counts them for the default layer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import triton
from triton.runtime.autotuner import Autotuner, Heuristics

from ddsm_triton._numerics import compute_dtype

from .backward import attention_bwd_kernel
from .configs import block_sizes, configs_for, row_width, tuning_bucket, wide
from .deterministic import segment_sum_kernel
from .forward import attention_fwd_kernel, logits_fwd_kernel
from .wide import wide_values_kernel

IO, ACC = "io", "acc"  # pointer element types: the input dtype, the accumulation dtype


@dataclass(frozen=True)
class KernelVariant:
    """One launch site: a kernel, the key of its configurations in ``CONFIGS``, the
    element type of each pointer it passes (``IO``, ``ACC`` or a torch dtype; the others
    it passes as None), its compile-time flags, the widths the report compiles
    it at, and the path that launches it: ``narrow`` (Dv in one program), ``wide``
    (Dv split) or ``both``."""

    name: str
    kernel: Callable
    config_key: str
    pointers: dict[str, str | torch.dtype]
    flags: dict[str, object] = field(default_factory=dict)
    widths: tuple[dict[str, int], ...] = ({"DK": 64, "DV": 64},)
    path: str = "narrow"

    @property
    def jit_function(self):
        """The kernel under its autotuner and heuristics (a ``JITFunction``, or the
        interpreter's function)."""
        fn = self.kernel
        while isinstance(fn, Autotuner | Heuristics):
            fn = fn.fn
        return fn

    def configs(self, dtype: torch.dtype, widths: dict | None = None) -> list[triton.Config]:
        """Every configuration this launch site can run with for inputs of ``dtype`` (at
        ``widths``: with the register cap of rows that wide)."""
        width = row_width(**{k: v for k, v in (widths or {}).items() if k in ("DK", "DV", "D")})
        return configs_for(self.config_key, dtype, None, width)

    def pointer_dtypes(self, dtype: torch.dtype) -> dict[str, torch.dtype]:
        pick = {IO: dtype, ACC: compute_dtype(dtype)}
        return {k: pick.get(v, v) for k, v in self.pointers.items()}

    def constexprs(self, config: triton.Config, widths: dict, dtype: torch.dtype) -> dict:
        """The compile-time arguments of a launch with ``config`` at ``widths``."""
        args = {**config.kwargs, "KSIZE": 3, **self.flags, **widths}
        tile, warps = config.kwargs["TILE"], config.num_warps
        blocks = block_sizes(self.config_key, tile, args, dtype.itemsize, warps)
        names = self.jit_function.arg_names
        absent = {a: None for a in names if a.endswith("_ptr") and a not in self.pointers}
        window = {"KSIZE": 3} if "KSIZE" in names else {}
        return {**config.kwargs, **window, **self.flags, **blocks, **absent}


def _pointers(io: str, acc: str = "", **typed: torch.dtype) -> dict:
    return {**dict.fromkeys(io.split(), IO), **dict.fromkeys(acc.split(), ACC), **typed}


_NARROW = tuple({"DK": d, "DV": d} for d in (16, 64, 256))
_CHANNEL = ({"DK": 64},)
_WIDE = ({"DV": 2048, "BLOCK_DV": 256},)
_FWD = _pointers("q_ptr k_ptr v_ptr offsets_ptr out_ptr", "scale_ptr lse_ptr")
_LOGITS = _pointers("q_ptr k_ptr offsets_ptr", "scale_ptr logits_ptr lse_ptr")


def _bwd(sums: bool, atomics: bool) -> dict:
    io = "q_ptr k_ptr offsets_ptr dq_ptr doffsets_ptr" + ("" if sums else " v_ptr dout_ptr")
    acc = "scale_ptr lse_ptr" + (" value_dots_ptr" if sums else "")
    if not atomics:
        return _pointers(io, acc + " entry_weights_ptr", entry_rows_ptr=torch.int32)
    return _pointers(io, acc + " dkey_ptr" + ("" if sums else " dvalue_ptr"))


def _wide(backward: bool, atomics: bool) -> dict:
    io = "v_ptr offsets_ptr " + ("dout_ptr" if backward else "out_ptr")
    acc = "logits_ptr lse_ptr" + (" value_dots_ptr" if backward else "")
    return _pointers(io, acc + (" dvalue_ptr" if atomics else ""))


KERNEL_VARIANTS: tuple[KernelVariant, ...] = (
    KernelVariant("dsa_fwd", attention_fwd_kernel, "dsa_fwd", _FWD, widths=_NARROW),
    KernelVariant(
        "dsa_logits", logits_fwd_kernel, "dsa_fwd", _LOGITS, widths=_CHANNEL, path="wide"
    ),
    *(
        KernelVariant(
            f"dsa_bwd[{label}]",
            attention_bwd_kernel,
            "dsa_bwd",
            _bwd(sums, atomics),
            {"VALUE_SUMS": sums, "ATOMICS": atomics},
            widths=_CHANNEL if sums else (_NARROW if atomics else ({"DK": 64, "DV": 64},)),
            path="wide" if sums else "narrow",
        )
        for label, sums, atomics in (
            ("atomic", False, True),
            ("deterministic", False, False),
            ("value sums", True, True),
            ("value sums, deterministic", True, False),
        )
    ),
    *(
        KernelVariant(
            f"dsa_wide[{label}]",
            wide_values_kernel,
            "dsa_wide",
            _wide(backward, atomics),
            {"BACKWARD": backward, "ATOMICS": atomics},
            widths=_WIDE,
            path="wide",
        )
        for label, backward, atomics in (
            ("forward", False, False),
            ("backward atomic", True, True),
            ("backward deterministic", True, False),
        )
    ),
    KernelVariant(
        "segment_sum",
        segment_sum_kernel,
        "segment_sum",
        _pointers(
            "src_ptr out_ptr", "entry_weights_ptr", starts_ptr=torch.int64, order_ptr=torch.int32
        ),
        {"WEIGHT": 0},
        widths=({"D": 64},),
        path="both",
    ),
)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the variant, its autotuner key, the configs it may compile."""

    variant: str
    key: tuple
    configs: tuple[triton.Config, ...]


def launch_plan(P: int, DK: int, DV: int, dtype: torch.dtype, deterministic: bool = False):
    """The launches of one forward and backward at ``P`` cells and widths ``DK``, ``DV``
    (window side 3), in order, as ``op.py`` makes them."""
    by_name = {v.name: v for v in KERNEL_VARIANTS}
    mode = "deterministic" if deterministic else "atomic"

    def launch(name: str, *widths: int, flags: tuple = ()) -> Launch:
        variant = by_name[name]
        configs = configs_for(variant.config_key, dtype, P, row_width(*widths[:2]))
        return Launch(name, (tuning_bucket(P, *widths), 3, *flags, str(dtype)), tuple(configs))

    if not wide(DV):
        bwd = launch(f"dsa_bwd[{mode}]", DK, DV, flags=(False, not deterministic))
        plan = [launch("dsa_fwd", DK, DV), bwd]
    else:
        logits = launch("dsa_logits", DK)
        backward = f"dsa_wide[backward {mode}]"
        sums = "dsa_bwd[value sums" + (", deterministic]" if deterministic else "]")
        plan = [logits, launch("dsa_wide[forward]", DV, flags=(False, False)), logits]
        plan += [launch(backward, DV, flags=(True, not deterministic))]
        plan += [launch(sums, DK, DV, flags=(True, not deterministic))]
    if deterministic:
        plan += [launch("segment_sum", D, flags=(w,)) for w, D in enumerate((DK, DV))]
    return plan


def first_call_launches(dtype: torch.dtype) -> list[Launch]:
    """Launches of the first forward and backward of the default layer, ``DDSM(256,
    256)`` (dim 256, one head, 3x3 window; channel branch: 8x8-pooled descriptors) on a
    batch of 2 at 128x256 (values at 64x128, halved for the channel branch)."""
    spatial = launch_plan(2 * 128 * 256, 256, 256, dtype)
    channel = launch_plan(2 * 16 * 16, 64, 32 * 64, dtype)
    return spatial + channel
