"""Launch configurations of the dynamic sample attention kernels, their block shapes,
and how each kernel is tuned: the one place that says what the library can launch.

A configuration gives ``TILE``, the elements of one cells x channels tile of a
program, and the warps. Channel blocks are the next power of two of the width; a row
tile is laid out in ``CHUNK``-channel pieces, ``CHUNK`` being what one warp reads with a
16-byte load a lane, so a row never spreads over warps (see ``kernels/bilinear.py``);
the cells per program follow from ``TILE``.

Tuning. A grid of many cells is autotuned over the configurations that suit the
dtype (``fits``), keyed on power-of-two buckets of the cell count and the widths
(``tuning_bucket``), never on exact widths; results are cached on disk where the
installed Triton can (``cache_results``). A small grid (the channel branch's few
hundred cells) cannot tell configurations apart: it takes the first that fits, without
compiling or timing the others. Under the interpreter there is no autotuner at all.
Autotuners are built without asking for the GPU driver (triton 3.3 does, when it
picks a default benchmarker), so the kernels import on a machine without a GPU.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import triton

from ddsm_triton._backend import interpreting
from ddsm_triton._numerics import compute_dtype

# Read once, at import: ``@triton.jit`` decides between compiling and interpreting at
# decoration time, so this is what the kernels were built for.
INTERPRET = interpreting()

_C = triton.Config
# Channel blocks: the next power of two of the width, within these bounds. Up to
# MAX_BLOCK_D value channels stay in one program; wider values take the Dv-split path.
MIN_BLOCK_D = 16
MAX_BLOCK_D = 512
# Bytes one lane loads at once (LDG.128), and lanes in a warp.
LOAD_BYTES = 16
WARP = 32
# Grids of fewer cells than this take a single heuristic configuration: they fill
# under two waves of an H100 in any of them.
SMALL_GRID_CELLS = 4096

# Elements of a tile each thread holds, per kernel and accumulation itemsize: a
# configuration must match it exactly. Eight float32 elements let a 256-channel row
# live in one warp; float64 halves it so that nothing spills (the report checks).
THREAD_ELEMENTS = {
    "dsa_fwd": {4: 8, 8: 4},
    "dsa_bwd": {4: 8, 8: 4},
    "dsa_wide": {4: 8, 8: 4},
    "segment_sum": {4: 8, 8: 4},
}
# Each thread's share of a row, hence its widest load, is at least 64 bits.
MIN_LOAD_BYTES = 8

CONFIGS: dict[str, list[triton.Config]] = {
    "dsa_fwd": [_C({"TILE": 1024}, num_warps=4), _C({"TILE": 2048}, num_warps=8)],
    "dsa_bwd": [_C({"TILE": 1024}, num_warps=4), _C({"TILE": 2048}, num_warps=8)],
    "dsa_wide": [_C({"TILE": 1024, "BLOCK_DV": 256}, num_warps=4)],
    "segment_sum": [_C({"TILE": 1024}, num_warps=4)],
}


def register_cap(name: str, dtype: torch.dtype, width: int) -> int | None:
    """``maxnreg`` of kernel ``name`` for rows of ``width`` channels. Left alone, ptxas
    held some backward builds at 128 registers and spilled (bfloat16 at D = 256 on
    sm_90: 32 bytes; float32 at D = 16 under triton 3.6: 8; float64 on sm_80 under
    triton 3.6: 8). A cap is a budget ptxas spends whole, so rows of 64 channels, which
    compile spill-free with 80 to 128 registers, keep none. The forward in half types
    fits 64 registers (32 warps an SM) without spilling; in float32 it spills at 64
    (8 bytes at D = 256), so it keeps its 72."""
    if name == "dsa_fwd":
        return 64 if dtype.itemsize == 2 else None
    if name != "dsa_bwd":
        return None
    if compute_dtype(dtype).itemsize == 8 or channel_block(width) >= 256:
        return 255  # sm_80 (no vector atomics) spilled 8 to 24 bytes at 168, D = 256
    return None if channel_block(width) == 64 else 168


def _with_float64(configs: list[triton.Config]) -> list[triton.Config]:
    """Each configuration, one stage, and its float64 twin: half the tile, same warps."""
    twins = [
        _C({**c.kwargs, "TILE": c.kwargs["TILE"] // 2}, num_warps=c.num_warps) for c in configs
    ]
    for c in [*configs, *twins]:
        c.num_stages = 1
    return [*configs, *twins]


CONFIGS = {name: _with_float64(configs) for name, configs in CONFIGS.items()}

# The interpreter pays a large fixed cost per program and per operation: big tiles.
INTERPRETER_CONFIGS: dict[str, triton.Config] = {
    "dsa_fwd": _C({"TILE": 2048}),
    "dsa_bwd": _C({"TILE": 2048}),
    "dsa_wide": _C({"TILE": 4096, "BLOCK_DV": 512}),
    "segment_sum": _C({"TILE": 4096}),
}


def channel_block(width: int) -> int:
    """Lanes for ``width`` channels: the next power of two, at least MIN_BLOCK_D."""
    return max(MIN_BLOCK_D, triton.next_power_of_2(width))


def wide(DV: int) -> bool:
    """Whether ``DV`` value channels take the Dv-split path."""
    return channel_block(DV) > MAX_BLOCK_D


def chunk(block: int, itemsize: int) -> int:
    """Channels of a row tile one warp covers with one 16-byte access a lane."""
    return min(block, WARP * LOAD_BYTES // itemsize)


def _vec(itemsize: int) -> dict[str, int]:
    return {"VEC": LOAD_BYTES // itemsize}


def block_sizes(
    name: str, tile: int, widths: dict, itemsize: int, num_warps: int | None = None
) -> dict[str, int]:
    """Block shape of kernel ``name`` for a launch: channel blocks and chunks from the
    widths (``DK``/``DV``/``D`` and the flags of ``widths``) and the input ``itemsize``,
    cells per program (``BLOCK_P``, ``BLOCK_R``) so that a tile holds ``tile`` elements,
    but no more than ``num_warps`` warps hold with one cell a thread (narrow rows share a
    warp: a thread holding two cells would hold every per-cell number twice). The one
    definition used by the launches, the kernel report and the traffic meter."""
    # Lanes access 16 bytes of the accumulation dtype (the width of an atomic), so the
    # backward's atomics share the loads' layout, and every kernel reduces a row in the
    # same order: the backward recomputes the forward's logits bit for bit.
    itemsize = max(itemsize, 4)
    if name == "segment_sum":
        block = min(channel_block(widths["D"]), MAX_BLOCK_D)
        rows = max(1, tile // block)
        return {
            "BLOCK_D": block,
            "CHUNK": chunk(block, itemsize),
            "BLOCK_R": rows,
            **_vec(itemsize),
        }
    if name == "dsa_wide":
        block = widths["BLOCK_DV"]
        cells = max(1, tile // block)
        return {"CHUNK_V": chunk(block, itemsize), "BLOCK_P": cells, **_vec(itemsize)}
    # Key-side kernels of the Dv-split path carry a minimal, unused value block.
    narrow = "DV" in widths and not widths.get("VALUE_SUMS", False)
    block_k = channel_block(widths["DK"])
    block_v = channel_block(widths["DV"]) if narrow else MIN_BLOCK_D
    slots = {}
    if name == "dsa_bwd":  # six numbers per sample (backward.py)
        slots["SLOTS"] = triton.next_power_of_2(
            max(6 * widths["KSIZE"] ** 2, LOAD_BYTES // itemsize)
        )
    return {
        **slots,
        "BLOCK_DK": block_k,
        "BLOCK_DV": block_v,
        "CHUNK_K": chunk(block_k, itemsize),
        "CHUNK_V": chunk(block_v, itemsize),
        "BLOCK_P": _cells(tile, max(block_k, block_v), itemsize, num_warps),
        **_vec(itemsize),
    }


def _cells(tile: int, block: int, itemsize: int, num_warps: int | None) -> int:
    """Cells per program: ``tile // block``, at most one a thread."""
    rows_per_warp = WARP * LOAD_BYTES // itemsize // chunk(block, itemsize)
    return max(1, min(tile // block, rows_per_warp * (num_warps or tile)))


def fits(name: str, config: triton.Config, dtype: torch.dtype) -> bool:
    """Whether ``config`` of kernel ``name`` suits inputs of ``dtype``."""
    per_thread = config.kwargs["TILE"] // (WARP * config.num_warps)
    wanted = THREAD_ELEMENTS[name][compute_dtype(dtype).itemsize]
    return per_thread == wanted and per_thread * dtype.itemsize >= MIN_LOAD_BYTES


def configs_for(
    name: str, dtype: torch.dtype, cells: int | None = None, width: int = 0
) -> list[triton.Config]:
    """The configurations kernel ``name`` may launch with on a GPU for ``dtype`` and rows
    of ``width`` channels (the wider of Dk and Dv), with their register cap; for a grid
    of ``cells`` below SMALL_GRID_CELLS, the first of them only."""
    found = [c for c in CONFIGS[name] if fits(name, c, dtype)]
    found = found[:1] if cells is not None and cells < SMALL_GRID_CELLS else found
    cap = register_cap(name, dtype, width)
    if cap is None:
        return found
    return [_C(c.kwargs, num_warps=c.num_warps, num_stages=1, maxnreg=cap) for c in found]


def row_width(DK: int = 0, DV: int = 0, D: int = 0) -> int:
    """Channels of the widest row a program holds (wide values are split)."""
    return max(DK, 0 if wide(DV) else DV, D)


def tuning_bucket(P: int, *widths: int) -> int:
    """Autotuner key of a launch: power-of-two buckets of the cell count and widths,
    packed in one integer (a config tuned at 32x32 cells is not reused at 256x512)."""
    bucket = max(P, 1).bit_length()
    for width in widths:
        bucket = bucket * 64 + (max(width, 1) - 1).bit_length()  # log2 of next_power_of_2
    return bucket


def _benchmark(kernel_call, quantiles):
    """The autotuner's timer, named explicitly so that building an autotuner does not
    ask for the driver's default one (triton 3.3 would, and fail without a GPU)."""
    return triton.testing.do_bench(kernel_call, quantiles=quantiles)


def tuned(name: str, dtype_arg: str, key: list[str], reset_to_zero=None) -> Callable:
    """Decorator: ``heuristics`` for the block shape under an autotuner over
    ``CONFIGS[name]`` keyed on ``key`` (``tuning_bucket`` and flags); under the
    interpreter, the one interpreter configuration (no autotuner). Autotuning runs a
    kernel once per configuration: the ``reset_to_zero`` accumulators restart at zero."""

    def blocks(args: dict) -> dict[str, int]:
        itemsize = args[dtype_arg].element_size()
        return block_sizes(name, args["TILE"], args, itemsize, args.get("num_warps"))

    example = {"DK": 1, "DV": 1, "D": 1, "BLOCK_DV": 16, "KSIZE": 1}
    shape = triton.heuristics({k: (lambda a, k=k: blocks(a)[k]) for k in blocks_of(name, example)})
    if INTERPRET:
        # Read at each launch: the traffic meter swaps in each GPU configuration.
        fixed = INTERPRETER_CONFIGS[name].kwargs
        tile = triton.heuristics(
            {k: (lambda a, k=k: INTERPRETER_CONFIGS[name].kwargs[k]) for k in fixed}
        )
        return lambda fn: tile(shape(fn))

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}  # launches pass keywords
        width = row_width(args.get("DK", 0), args.get("DV", 0), args.get("D", 0))
        return configs_for(name, args[dtype_arg].dtype, args.get("P", args.get("R")), width)

    def zero_accumulators(args, reset_only=False):
        for arg in reset_to_zero or ():  # an accumulator a launch leaves out is None
            if args.get(arg) is not None:
                args[arg].zero_()

    options = {"cache_results": True}
    supported = inspect.signature(triton.autotune).parameters
    return lambda fn: triton.autotune(
        configs=CONFIGS[name],
        key=key,
        prune_configs_by={"early_config_prune": prune},
        pre_hook=zero_accumulators if reset_to_zero else None,
        do_bench=_benchmark,
        **{k: v for k, v in options.items() if k in supported},
    )(shape(fn))


def blocks_of(name: str, example: dict) -> list[str]:
    """Names of the block constexprs kernel ``name`` takes."""
    return list(block_sizes(name, 1, example, 4))
