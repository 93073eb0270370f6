"""Traffic meter: the bytes every Triton kernel requests per output cell, against the
gather floor, in each GPU launch configuration.

    python -m ddsm_triton.bench.traffic [--json] [--dtype float32] [--max-rows N]

The kernels run under the Triton interpreter (:func:`traffic_report` re-runs itself in
a subprocess when they were compiled). :func:`count_traffic` wraps the interpreter's
memory operations and adds up the bytes of every load, store and atomic, masked lanes
excluded: what a GPU's load/store units are asked for. Row ``i`` runs every kernel in
its ``i``-th GPU configuration (those of ``KERNEL_VARIANTS``).

Floors per cell, in the input dtype (lse in the accumulation dtype), for ``c`` corners
a cell (``4 N``, or exactly the in-bounds ones): forward, ``c (Dk + Dv)`` gathered
elements plus query, offsets, out and lse; backward loads, the gathers plus q, dO, out,
offsets and lse; backward atomics, ``c (Dk + Dv)`` elements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections import defaultdict, namedtuple
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from ddsm_triton._backend import interpreting

from .kernel_report import config_label, format_table, json_subprocess

# One op shape: a (B, H, W) grid of cells, G heads, widths, N = k*k samples.
Shape = namedtuple("Shape", "name B H W G DK DV k dilation", defaults=(1,))
# Small maps (the interpreter is slow); offsets N(0, 1), so border samples fall
# partly outside. The last is the channel branch: Dk = 8*8 descriptors, Dv = h'*w'.
SWEEP = (
    Shape("G1 D256 N9", 1, 8, 8, 1, 256, 256, 3),
    Shape("G4 D64 N9", 1, 8, 8, 4, 64, 64, 3),
    Shape("G4 D16 N9", 1, 8, 8, 4, 16, 16, 3),
    Shape("G1 D64 N25", 1, 8, 8, 1, 64, 64, 5),
    Shape("channel Dk64 Dv2048", 1, 8, 8, 1, 64, 2048, 3),
)
# (builder method, kind, index of the pointer, index of the mask or None). A method that
# calls another counted one (create_load -> create_masked_load) is counted once.
_OPS = (("create_load", "load", 0, None), ("create_store", "store", 0, None))
_OPS += (("create_masked_load", "load", 0, 1), ("create_masked_store", "store", 0, 2))
_OPS += (("create_atomic_rmw", "atomic", 1, 3), ("create_atomic_cas", "atomic", 0, None))


@contextlib.contextmanager
def count_traffic() -> Iterator[dict[str, int]]:
    """Bytes of every interpreted load, store and atomic inside the block, by kind
    (``"load"``, ``"store"``, ``"atomic"``), and ``"atomic elements"``."""
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder

    traffic, depth = defaultdict(int), [0]

    def wrap(original, kind: str, ptr_at: int, mask_at: int | None):
        def counted(self, *args, **kwargs):
            if depth[0] == 0:
                ptr, mask = args[ptr_at], True if mask_at is None else args[mask_at].data
                n = np.broadcast_to(mask, ptr.data.shape).sum()
                traffic[kind] += int(n) * (ptr.get_element_ty().primitive_bitwidth // 8)
                traffic["atomic elements"] += int(n) if kind == "atomic" else 0
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        return counted

    patches = {name: wrap(getattr(InterpreterBuilder, name), *how) for name, *how in _OPS}
    with mock.patch.multiple(InterpreterBuilder, **patches):  # restored on exit
        yield traffic


def in_bounds_corners(offsets, dilation: int) -> int:
    """Number of (cell, sample, corner) whose corner lies inside the map (docs/semantics.md §1.2, step 3)."""
    import torch

    from ddsm_triton.reference.dynamic_sample_attention import sample_positions

    _, H, W, *_ = offsets.shape
    y0, x0 = (torch.floor(p) for p in sample_positions(offsets.double(), dilation))
    # corners in = (rows of the 2 that are in) x (columns of the 2 that are in)
    rows = sum(((y0 + a >= 0) & (y0 + a < H)).long() for a in (0, 1))
    cols = sum(((x0 + b >= 0) & (x0 + b < W)).long() for b in (0, 1))
    return int((rows * cols).sum())


def floors(shape: Shape, itemsize: int, acc_itemsize: int, corners: float) -> dict[str, float]:
    """Per-cell floors (docs/design.md §3.6) in bytes (atomics: elements) with ``corners``
    corners a cell."""
    gathers = corners * (shape.DK + shape.DV) * itemsize
    q, v, off = shape.DK * itemsize, shape.DV * itemsize, 2 * shape.k**2 * itemsize
    return {
        "forward": gathers + q + off + v + acc_itemsize,
        "backward_loads": gathers + q + 2 * v + off + acc_itemsize,
        "backward_atomics": corners * (shape.DK + shape.DV),
    }


def measure_shape(
    shape: Shape, dtype_name: str = "float32", max_rows: int | None = None
) -> list[dict]:
    """Bytes per cell and their ratios to the floors at ``shape``, one row per GPU
    configuration index (each kernel family in its ``i``-th config, or its last)."""
    import torch

    from ddsm_triton._numerics import compute_dtype
    from ddsm_triton.kernels import INTERPRETER_CONFIGS, KERNEL_VARIANTS, dynamic_sample_attention

    dtype = getattr(torch, dtype_name)
    families = {v.config_key: v.configs(dtype) for v in KERNEL_VARIANTS}
    gen = torch.Generator().manual_seed(0)
    s, cells = shape, shape.B * shape.H * shape.W * shape.G
    sizes = [(s.B, s.H, s.W, s.G, *d) for d in ((s.DK,), (s.DK,), (s.DV,), (s.k**2, 2))]
    inputs = [torch.randn(size, generator=gen).to(dtype).requires_grad_() for size in sizes]
    grad_out = torch.randn(s.B, s.H, s.W, s.G, s.DV, generator=gen).to(dtype)
    corners = in_bounds_corners(inputs[3].detach(), s.dilation)
    acc = compute_dtype(dtype).itemsize
    floor_4n = floors(s, dtype.itemsize, acc, 4 * s.k**2)
    exact = floors(s, dtype.itemsize, acc, corners / cells)
    rows, saved = [], dict(INTERPRETER_CONFIGS)
    count = max(len(c) for c in families.values())
    for i in range(count if max_rows is None else min(count, max_rows)):
        assignment = {key: configs[min(i, len(configs) - 1)] for key, configs in families.items()}
        INTERPRETER_CONFIGS.update(assignment)  # the interpreter's launches read it
        try:
            with count_traffic() as fwd:
                out = dynamic_sample_attention(*inputs, s.dilation, s.DK**-0.5)
            with count_traffic() as bwd:
                torch.autograd.grad(out, inputs, grad_out)
        finally:
            INTERPRETER_CONFIGS.update(saved)
        atomics = bwd["atomic elements"]
        fwd_bytes = (fwd["load"] + fwd["store"]) / cells
        labels_ = "; ".join(f"{k} {config_label(c)}" for k, c in assignment.items())
        row = {"shape": s.name, "dtype": dtype_name, "config": labels_}
        row |= {"forward_bytes_per_cell": fwd_bytes, "backward_atomics_per_cell": atomics / cells}
        row["backward_load_bytes_per_cell"] = bwd["load"] / cells
        for name, floor in (("floor", floor_4n), ("exact", exact)):
            row[f"forward_x_{name}"] = fwd_bytes / floor["forward"]
            row[f"backward_loads_x_{name}"] = bwd["load"] / cells / floor["backward_loads"]
        row["backward_atomics_exact"] = atomics == round(exact["backward_atomics"] * cells)
        rows.append(row | {"in_bounds_corner_fraction": corners / (cells * 4 * s.k**2)})
    return rows


def traffic_report(dtype_name: str = "float32", max_rows: int | None = None) -> list[dict]:
    """:func:`measure_shape` rows of every shape of SWEEP (other shapes: call it), in a
    subprocess with the interpreter on unless this process interprets the kernels already."""
    if not interpreting():
        rows = [] if max_rows is None else ["--max-rows", str(max_rows)]
        return json_subprocess("traffic", ["--dtype", dtype_name, *rows], interpret=True)
    return [row for shape in SWEEP for row in measure_shape(shape, dtype_name, max_rows)]


_COLUMNS = {"shape": "shape", "config": "config", "forward_bytes_per_cell": "fwd B/cell"}
_COLUMNS |= {"forward_x_exact": "fwd x exact", "backward_load_bytes_per_cell": "bwd load B/cell"}
_COLUMNS |= {"backward_loads_x_exact": "bwd loads x exact", "backward_atomics_exact": "1 atomic"}
_COLUMNS |= {"in_bounds_corner_fraction": "in-bounds corners"}


def bench_hook(out_dir: Path, max_rows: int | None = None) -> None:
    """``make bench``: traffic.json and traffic.md in ``out_dir``, the table printed; a
    failure becomes a message in traffic.md, never a crashed benchmark."""
    try:
        rows = traffic_report(max_rows=max_rows)
    except Exception as err:  # a broken meter must not lose the benchmark's results
        text = f"traffic meter unavailable ({type(err).__name__}: {err})"
    else:
        (out_dir / "traffic.json").write_text(json.dumps(rows, indent=1) + "\n")
        text = "Bytes per cell the kernels request (interpreter, GPU configs):\n\n"
        text += format_table(rows, _COLUMNS)
    (out_dir / "traffic.md").write_text(text + "\n")
    print(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"))
    parser.add_argument("--max-rows", type=int, default=None, help="config rows per shape")
    args = parser.parse_args(argv)
    rows = traffic_report(dtype_name=args.dtype, max_rows=args.max_rows)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows, _COLUMNS))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    main()
