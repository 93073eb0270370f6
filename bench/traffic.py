"""Traffic meter: the bytes every Triton kernel requests per output cell, against the
gather floor, for each GPU launch configuration.

    python -m ddsm_triton.bench.traffic [--json] [--dtype float32]

The kernels run under the Triton interpreter (this module switches it on when run as a
script, and :func:`traffic_report` re-runs itself in a subprocess when the kernels were
imported without it). :func:`count_traffic` wraps the interpreter builder's memory
operations and adds up, per kernel, the bytes of every load, store and atomic, masked-off
lanes excluded: exactly what a GPU's load/store units are asked for (from L1/L2 or DRAM).

Every GPU configuration of ``KERNEL_VARIANTS`` (the one list the kernel report also
compiles) is forced in turn: row ``i`` runs each kernel in its ``i``-th config.

Floors, per cell, in the input dtype (``lse`` in the accumulation dtype):

* forward: the four key and value corners of every sample, ``4 N (Dk + Dv)`` elements,
  plus query, offsets, out and lse; compared with all forward bytes (loads + stores);
* backward loads: the same gathers plus q, dO, out, offsets and lse;
* backward atomics: ``4 N (Dk + Dv)`` accumulator elements. The exact count, one atomic
  per (cell, sample, in-bounds corner, channel), is given too: corners outside the map
  (the borders of these small maps) need none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from .kernel_report import _config_label

__all__ = [
    "SWEEP",
    "Shape",
    "Traffic",
    "bench_hook",
    "count_traffic",
    "format_table",
    "in_bounds_corners",
    "measure_shape",
    "traffic_report",
]


@dataclass(frozen=True)
class Shape:
    """One op shape: a (B, H, W) grid of cells, G heads, N = k*k samples."""

    name: str
    B: int
    H: int
    W: int
    G: int
    DK: int
    DV: int
    k: int
    dilation: int = 1

    @property
    def cells(self) -> int:
        return self.B * self.H * self.W * self.G


# The traffic goals' shapes. Maps are small because the interpreter is slow (a run of
# the op takes seconds); offsets are N(0, 1), so samples near the border fall partly
# outside: the "exact" ratios divide by the gathers of in-bounds corners only.
SWEEP = (
    Shape("G1 D256 N9", 1, 8, 8, 1, 256, 256, 3),
    Shape("G4 D64 N9", 1, 8, 8, 4, 64, 64, 3),
    Shape("G4 D16 N9", 1, 8, 8, 4, 16, 16, 3),
    Shape("G1 D64 N25", 1, 8, 8, 1, 64, 64, 5),
    # The channel branch: an s x s grid of channels (s = 8, dim 64), Dk = 8*8 pooled
    # descriptors, Dv = h'*w' values.
    Shape("channel Dk64 Dv2048", 1, 8, 8, 1, 64, 2048, 3),
)


# ------------------------------------------------------------------------ counting
@dataclass
class Traffic:
    """Bytes requested per kernel and kind ("load", "store", "atomic"), masked lanes
    excluded, and the number of atomic elements."""

    bytes: dict[tuple[str, str], int]
    atomic_elements: dict[str, int]
    launches: dict[str, int]

    def total(self, kind: str) -> int:
        return sum(b for (_, k), b in self.bytes.items() if k == kind)


# (builder method, kind, index of the pointer argument, index of the mask or None).
# ``create_load`` / ``create_store`` call the masked forms in triton 3.9; the depth
# guard below counts such nested calls once, whichever way a version implements them.
_OPS = (
    ("create_load", "load", 0, None),
    ("create_store", "store", 0, None),
    ("create_masked_load", "load", 0, 1),
    ("create_masked_store", "store", 0, 2),
    ("create_atomic_rmw", "atomic", 1, 3),
    ("create_atomic_cas", "atomic", 0, None),
)


@contextlib.contextmanager
def count_traffic(kernels: dict[str, object] | None = None) -> Iterator[Traffic]:
    """Count the memory traffic of every interpreted launch inside the block.

    ``kernels`` maps a label to an autotuned kernel object; launches through it are
    attributed to that label (everything else to ``"other"``).
    """
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder

    traffic = Traffic(defaultdict(int), defaultdict(int), defaultdict(int))
    current = ["other"]
    depth = [0]

    def wrap(original, kind: str, ptr_at: int, mask_at: int | None):
        def counted(self, *args, **kwargs):
            if depth[0] == 0:
                ptr = args[ptr_at]
                if mask_at is None or args[mask_at] is None:
                    n = ptr.data.size
                else:
                    n = int(np.broadcast_to(args[mask_at].data, ptr.data.shape).sum())
                itemsize = ptr.get_element_ty().primitive_bitwidth // 8
                traffic.bytes[current[0], kind] += n * itemsize
                if kind == "atomic":
                    traffic.atomic_elements[current[0]] += n
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        return counted

    def attribute(label: str, run):
        def labelled(*args, **kwargs):
            previous, current[0] = current[0], label
            traffic.launches[label] += 1
            try:
                return run(*args, **kwargs)
            finally:
                current[0] = previous

        return labelled

    originals = {name: getattr(InterpreterBuilder, name) for name, *_ in _OPS}
    kernels = kernels or {}
    try:
        for name, kind, ptr_at, mask_at in _OPS:
            setattr(InterpreterBuilder, name, wrap(originals[name], kind, ptr_at, mask_at))
        for label, kernel in kernels.items():
            kernel.run = attribute(label, type(kernel).run.__get__(kernel))
        yield traffic
    finally:
        for name, original in originals.items():
            setattr(InterpreterBuilder, name, original)
        for kernel in kernels.values():
            vars(kernel).pop("run", None)


@contextlib.contextmanager
def forced_configs(assignment: dict[object, object]) -> Iterator[None]:
    """Launch each autotuned kernel in ``assignment`` with its one given config."""
    saved = {kernel: kernel.configs for kernel in assignment}
    try:
        for kernel, config in assignment.items():
            kernel.configs = [config]
        yield
    finally:
        for kernel, configs in saved.items():
            kernel.configs = configs


# ------------------------------------------------------------------------ floors
def in_bounds_corners(offsets, dilation: int) -> int:
    """Number of (cell, sample, corner) whose corner lies inside the map (docs/semantics.md §1.2, step 3)."""
    import torch

    from ddsm_triton.reference.dynamic_sample_attention import sample_positions

    _, H, W, *_ = offsets.shape
    y, x = sample_positions(offsets.double(), dilation)
    y0, x0 = torch.floor(y), torch.floor(x)
    rows = [((y0 + a >= 0) & (y0 + a < H)).long() for a in (0, 1)]
    cols = [((x0 + b >= 0) & (x0 + b < W)).long() for b in (0, 1)]
    return int(sum((r * c).sum() for r in rows for c in cols))


def floors(
    shape: Shape, itemsize: int, acc_itemsize: int, corners: float | None = None
) -> dict[str, float]:
    """The per-cell floors (docs/design.md §3.6), in bytes (atomics: in elements), with ``4 N``
    corners per cell or, given, ``corners`` (the in-bounds ones) per cell."""
    N = shape.k**2
    corners = 4 * N if corners is None else corners
    gathers = corners * (shape.DK + shape.DV) * itemsize
    q, v, off = shape.DK * itemsize, shape.DV * itemsize, 2 * N * itemsize
    return {
        "forward": gathers + q + off + v + acc_itemsize,
        "backward_loads": gathers + q + 2 * v + off + acc_itemsize,
        "backward_atomics": corners * (shape.DK + shape.DV),
    }


# ------------------------------------------------------------------------ measuring
def _inputs(shape: Shape, dtype, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    s = shape
    sizes = [(s.B, s.H, s.W, s.G, d) for d in (s.DK, s.DK, s.DV)]
    tensors = [torch.randn(size, generator=gen) for size in sizes]
    tensors.append(torch.randn(s.B, s.H, s.W, s.G, s.k**2, 2, generator=gen) + 0.37)
    grad_out = torch.randn(s.B, s.H, s.W, s.G, s.DV, generator=gen).to(dtype)
    return [t.to(dtype).requires_grad_() for t in tensors], grad_out


def _run(shape: Shape, dtype, labels: dict[str, object]) -> tuple[Traffic, Traffic]:
    """Forward then backward traffic of one call of the op at ``shape``."""
    import torch

    from ddsm_triton.kernels import dynamic_sample_attention

    inputs, grad_out = _inputs(shape, dtype)
    scale = shape.DK**-0.5
    with count_traffic(labels) as fwd:
        out = dynamic_sample_attention(*inputs, shape.dilation, scale)
    with count_traffic(labels) as bwd:
        torch.autograd.grad(out, inputs, grad_out)
    return fwd, bwd


def _kernels(dtype) -> dict[str, tuple[object, list]]:
    """Each distinct autotuned kernel of KERNEL_VARIANTS: label -> (kernel, configs)."""
    from ddsm_triton.kernels import KERNEL_VARIANTS

    found: dict[str, tuple[object, list]] = {}
    seen: set[int] = set()
    for variant in KERNEL_VARIANTS:
        if id(variant.kernel) not in seen:
            seen.add(id(variant.kernel))
            found[variant.config_key] = (variant.kernel, variant.configs(dtype))
    return found


def measure_shape(
    shape: Shape, dtype_name: str = "float32", max_rows: int | None = None
) -> list[dict]:
    """Rows of bytes per cell and their ratios to the floors at ``shape``. Row ``i`` runs
    every kernel in its ``i``-th GPU configuration (its last, if it has fewer), so the
    rows cover every launchable configuration of every kernel; ``max_rows`` keeps the
    first rows only (each costs a full interpreted forward and backward)."""
    import torch

    from ddsm_triton._numerics import compute_dtype

    dtype = getattr(torch, dtype_name)
    acc = compute_dtype(dtype)
    kernels = _kernels(dtype)
    labels = {label: kernel for label, (kernel, _) in kernels.items()}
    inputs, _ = _inputs(shape, dtype)
    cells = shape.cells
    corners = in_bounds_corners(inputs[3].detach(), shape.dilation)
    floor = floors(shape, dtype.itemsize, acc.itemsize)
    exact = floors(shape, dtype.itemsize, acc.itemsize, corners / cells)
    rows = []
    count = max(len(configs) for _, configs in kernels.values())
    for i in range(count if max_rows is None else min(count, max_rows)):
        assignment = {
            kernel: configs[min(i, len(configs) - 1)] for kernel, configs in kernels.values()
        }
        with forced_configs(assignment):
            fwd, bwd = _run(shape, dtype, labels)
        launched = sorted({k for t in (fwd, bwd) for k in t.launches})
        atomics = sum(bwd.atomic_elements.values())
        fwd_bytes = fwd.total("load") + fwd.total("store")
        rows.append(
            {
                "shape": shape.name,
                "dtype": dtype_name,
                "config": "; ".join(
                    f"{name} {_config_label(assignment[labels[name]])}" for name in launched
                ),
                "forward_bytes_per_cell": fwd_bytes / cells,
                "forward_x_floor": fwd_bytes / cells / floor["forward"],
                "forward_x_exact": fwd_bytes / cells / exact["forward"],
                "backward_load_bytes_per_cell": bwd.total("load") / cells,
                "backward_loads_x_floor": bwd.total("load") / cells / floor["backward_loads"],
                "backward_loads_x_exact": bwd.total("load") / cells / exact["backward_loads"],
                "backward_store_bytes_per_cell": bwd.total("store") / cells,
                "backward_atomics_per_cell": atomics / cells,
                "backward_atomics_x_floor": atomics / cells / floor["backward_atomics"],
                "backward_atomics_exact": atomics == round(exact["backward_atomics"] * cells),
                "in_bounds_corner_fraction": corners / (cells * 4 * shape.k**2),
                "floors_per_cell": floor,
                "exact_floors_per_cell": exact,
                "shape_dims": asdict(shape),
            }
        )
    return rows


def _interprets_here() -> bool:
    """Whether the kernels run under the interpreter in this process: as they were
    imported, or, not imported yet, as TRITON_INTERPRET says they will be."""
    module = sys.modules.get("ddsm_triton.kernels.dynamic_sample_attention")
    if module is not None:
        return bool(module.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def traffic_report(
    shapes: tuple[Shape, ...] = SWEEP, dtype_name: str = "float32", max_rows: int | None = None
) -> list[dict]:
    """Rows of :func:`measure_shape` for every shape. Runs in a subprocess with the
    interpreter switched on unless this process already interprets the kernels."""
    if not _interprets_here():
        if shapes != SWEEP:
            raise ValueError("custom shapes need the kernels interpreted in this process")
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        command = [sys.executable, "-m", "ddsm_triton.bench.traffic", "--json"]
        command += ["--dtype", dtype_name]
        if max_rows is not None:
            command += ["--max-rows", str(max_rows)]
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        return json.loads(done.stdout)
    return [row for shape in shapes for row in measure_shape(shape, dtype_name, max_rows)]


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`traffic_report` rows."""
    headers = (
        "shape",
        "config",
        "fwd B/cell",
        "fwd x floor",
        "fwd x exact",
        "bwd load B/cell",
        "bwd loads x floor",
        "bwd loads x exact",
        "atomics/cell",
        "atomics x floor",
        "atomics exact",
        "in-bounds corners",
    )
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        cells = (
            r["shape"],
            r["config"],
            f"{r['forward_bytes_per_cell']:.0f}",
            f"{r['forward_x_floor']:.3f}",
            f"{r['forward_x_exact']:.3f}",
            f"{r['backward_load_bytes_per_cell']:.0f}",
            f"{r['backward_loads_x_floor']:.3f}",
            f"{r['backward_loads_x_exact']:.3f}",
            f"{r['backward_atomics_per_cell']:.0f}",
            f"{r['backward_atomics_x_floor']:.3f}",
            "yes" if r["backward_atomics_exact"] else "NO",
            f"{r['in_bounds_corner_fraction']:.3f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: print the table (or JSON) for the sweep."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "float64"))
    parser.add_argument(
        "--max-rows", type=int, default=None, help="configuration rows per shape (default: all)"
    )
    args = parser.parse_args(argv)
    rows = traffic_report(dtype_name=args.dtype, max_rows=args.max_rows)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


if __name__ == "__main__":
    # Before anything imports the kernels: decoration reads the variable.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    main()


def bench_hook(out_dir, max_rows: int | None = None) -> None:
    """``make bench``: write traffic.json and traffic.md to ``out_dir`` and print the
    table (``max_rows`` configuration rows per shape; ``--quick`` takes one, as all of
    them take minutes); a failure becomes a message in traffic.md, never a crashed
    benchmark."""
    from pathlib import Path

    out_dir = Path(out_dir)
    try:
        rows = traffic_report(max_rows=max_rows)
    except Exception as err:  # a broken meter must not lose the benchmark's results
        text = f"traffic meter unavailable ({type(err).__name__}: {err})"
    else:
        (out_dir / "traffic.json").write_text(json.dumps(rows, indent=1) + "\n")
        text = "Bytes per cell requested by the kernels (interpreter, GPU configs):\n\n"
        text += format_table(rows)
    (out_dir / "traffic.md").write_text(text + "\n")
    print(text)
