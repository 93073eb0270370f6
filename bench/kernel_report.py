"""Static report of every Triton kernel the library can launch, compiled for a real GPU
without one; and the compiles a first call triggers.

    python -m ddsm_triton.bench.kernel_report [--arch 90] [--json] [--first-call]

Each launch site of ``KERNEL_VARIANTS``, in each configuration, report width and
dtype, is compiled for ``sm_<arch>`` (16-byte aligned pointers, channel counts divisible
by 16, as launches specialise) and Triton's ``cuobjdump`` reads back: registers, spills,
shared memory, resident warps per SM (register file and shared memory), ``BAR.SYNC``
count, global load widths, RED/ATOM and SHFL counts. SASS counts are static: a loop
body counts once. Under the interpreter :func:`kernel_report` re-runs in a subprocess.

``--first-call`` compiles nothing: per distinct autotuner key in the launch plan of one
forward and backward of the default layer (``first_call_launches``), the configs its
pruner keeps; on a GPU each is compiled once, then cached.

``make bench`` calls :func:`bench_hook`: kernel_report.json is reused while the kernel sources
and Triton are unchanged (compiling every configuration takes minutes on a small CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ddsm_triton._backend import interpreting

DTYPES = ("float32", "float16", "bfloat16", "float64")
_CHANNEL_ARGS = frozenset({"DK", "DV", "D"})  # specialised as multiples of 16
_TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
_TRITON_TYPES |= {"int32": "i32", "int64": "i64"}
# Per SM: 32-bit registers, warps, blocks, shared memory bytes (with the 1 KiB per
# block the driver reserves), by compute capability.
_SM = {80: (65536, 64, 32, 164 * 1024), 90: (65536, 64, 32, 228 * 1024)}
# report key: table header
_COLUMNS = dict(kernel="kernel", config="config", widths="widths", dtype="dtype", registers="regs")
_COLUMNS |= dict(spill_bytes="spill", shared_bytes="smem", warps_per_sm="warps/SM")
_COLUMNS |= dict(
    bar_sync="BAR.SYNC", loads="LDG bits:count", reductions="RED+ATOM", shuffles="SHFL"
)
_FIRST_CALL = {"kernel": "launch", "key": "autotuner key", "configs": "configs compiled"}
#: The numeric fields of a report row that ``make bench`` puts into the CSV.
CSV_METRICS = ("registers", "spill_bytes", "shared_bytes", "warps_per_sm", "bar_sync")
CSV_METRICS += ("widest_load_bits", "reductions", "shuffles")


def config_label(config) -> str:
    blocks = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    regs = f",maxnreg={config.maxnreg}" if getattr(config, "maxnreg", None) else ""
    return f"{blocks},warps={config.num_warps}{regs}"


def _compile_one(job: tuple[int, int, int, str, int]) -> dict:
    """Compile one (variant, config, widths, dtype, arch) and read its cubin back."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ddsm_triton.kernels import KERNEL_VARIANTS

    v, c, w, dtype_name, arch = job
    variant, dtype = KERNEL_VARIANTS[v], getattr(torch, dtype_name)
    widths = variant.widths[w]
    config = variant.configs(dtype, widths)[c]
    fn = variant.jit_function
    constexprs, pointers = variant.constexprs(config, widths, dtype), variant.pointer_dtypes(dtype)
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        ptr = pointers.get(name)
        ty = "i32" if ptr is None else "*" + _TRITON_TYPES[str(ptr).removeprefix("torch.")]
        signature[name] = "constexpr" if name in constexprs else ty
        if name not in constexprs and (ptr is not None or name in _CHANNEL_ARGS):
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {k: getattr(config, k, None) for k in ("num_warps", "num_stages", "maxnreg")}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    row = {"kernel": variant.name, "config": config_label(config), "dtype": dtype_name}
    row["widths"] = ",".join(f"{k}={n}" for k, n in widths.items())
    return {**row, "arch": arch, **sass_stats(compiled.asm["cubin"], arch, config.num_warps)}


def sass_stats(cubin: bytes, arch: int, num_warps: int) -> dict:
    """Resources and instruction counts of one kernel's cubin (see the module doc)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        tool = Path(sys.modules["triton"].__file__).parent / "backends/nvidia/bin/cuobjdump"
        usage, sass = (
            subprocess.run([tool, flag, path], check=True, capture_output=True, text=True).stdout
            for flag in ("--dump-resource-usage", "--dump-sass")
        )
    # "REG:40 STACK:0 SHARED:0 LOCAL:0 ..."; a field it leaves out is 0
    field = defaultdict(int, {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", usage)})
    regs, shared = field["REG"], field["SHARED"]
    loads = load_widths(sass)
    return {
        "registers": regs,
        "spill_bytes": field["STACK"] + field["LOCAL"],
        "shared_bytes": shared,
        "warps_per_sm": resident_warps(regs, shared, num_warps, arch),
        "bar_sync": len(re.findall(r"\bBAR\.SYNC", sass)),
        "widest_load_bits": max(loads, default=0),
        "loads": " ".join(f"{bits}:{n}" for bits, n in sorted(loads.items(), reverse=True)),
        "reductions": len(re.findall(r"\b(?:REDG?|ATOMG?)\.", sass)),
        "shuffles": len(re.findall(r"\bSHFL\.", sass)),
    }


def resident_warps(registers: int, shared: int, num_warps: int, arch: int) -> int:
    """Warps an SM holds at once: whole blocks, limited by the register file (allocated
    per warp in units of 256 registers), shared memory, and the block and warp caps."""
    regfile, max_warps, max_blocks, smem = _SM[arch]
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    blocks = min(max_blocks, regfile // (per_warp * num_warps), max_warps // num_warps)
    if shared:
        blocks = min(blocks, smem // (shared + 1024))
    return blocks * num_warps


def load_widths(sass: str) -> dict[int, int]:
    """Global loads (``LDG``) by width in bits: ``LDG.E.128`` 128, ``LDG.E.64`` 64,
    ``LDG.E.U16`` 16, a plain ``LDG.E`` 32."""
    widths: dict[int, int] = {}
    for opcode in re.findall(r"\bLDG(?:\.[A-Z0-9_]+)*", sass):
        bits = 32
        for suffix in opcode.split(".")[1:]:
            bits = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}.get(suffix, bits)
        widths[bits] = widths.get(bits, 0) + 1
    return widths


def kernel_report(arch: int, *, workers: int | None = None) -> list[dict]:
    """Compile every kernel in every configuration and dtype for ``sm_<arch>``: one dict
    per (kernel, config, widths, dtype) with the keys of ``_COLUMNS``, ``arch`` and
    ``widest_load_bits``. Needs no GPU."""
    if interpreting():
        return json_subprocess("kernel_report", ["--arch", str(arch)], interpret=False)
    import torch

    from ddsm_triton.kernels import KERNEL_VARIANTS

    jobs = [  # indices: a worker process looks its variant and config up again
        (v, c, w, dtype, arch)
        for v, variant in enumerate(KERNEL_VARIANTS)
        for w, widths in enumerate(variant.widths)
        for dtype in DTYPES
        for c in range(len(variant.configs(getattr(torch, dtype), widths)))
    ]
    with ProcessPoolExecutor(max_workers=workers or min(len(jobs), os.cpu_count() or 1)) as pool:
        return list(pool.map(_compile_one, jobs))


def json_subprocess(module: str, args: list[str], *, interpret: bool):
    """The JSON that ``python -m ddsm_triton.bench.<module> --json <args>`` prints, run with
    the Triton interpreter on or off (it is read once, when the kernels are imported)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_INTERPRET": "1"} if interpret else {}
    command = [sys.executable, "-m", f"{__package__}.{module}", "--json", *args]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def first_call(dtype_name: str) -> list[dict]:
    """The compiles of the first forward and backward of the default layer on a GPU, in
    ``dtype_name``: one row per distinct (kernel, autotuner key) the launch plan holds,
    with the configurations the pruner keeps for it (each is compiled once)."""
    import torch

    from ddsm_triton.kernels import first_call_launches

    rows = {}
    for launch in first_call_launches(getattr(torch, dtype_name)):
        labels = [config_label(c) for c in launch.configs]
        row = {"kernel": launch.variant, "key": str(launch.key), "configs": labels}
        rows.setdefault((launch.variant, launch.key), row)
    return list(rows.values())


def format_table(rows: list[dict], columns: dict[str, str] = _COLUMNS) -> str:
    """Fixed-width table of report rows (the keys of ``columns`` that rows have), numbers
    to three places."""
    keys = [k for k in columns if any(k in r for r in rows)]
    values = [[r.get(k, "") for k in keys] for r in rows]
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in values]
    widths = [max(len(columns[k]), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(columns[k].ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def fingerprint() -> str:
    """Hash of what the report depends on: kernel sources, this module, Triton."""
    import triton

    import ddsm_triton.kernels as kernels

    digest = hashlib.sha256(triton.__version__.encode() + Path(__file__).read_bytes())
    for source in sorted(Path(kernels.__file__).parent.rglob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def bench_hook(out_dir: Path, rec, arch: int = 90) -> None:
    """``make bench``: kernel_report.json (entries, or why there are none; reused while its
    fingerprint holds), kernel_report.md, a CSV row per kernel and metric of CSV_METRICS,
    and an "info" row with the message."""
    path, current = Path(out_dir) / "kernel_report.json", fingerprint()
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    made_here = {"arch": arch, "fingerprint": current}
    if previous.get("available") and made_here.items() <= previous.items():
        entries, how = previous["kernels"], f"reused ({current})"
    else:
        try:
            entries, how = kernel_report(arch), "compiled"
        except Exception as err:  # a broken report must not lose the benchmark's results
            entries, how = None, f"failed ({type(err).__name__}: {err})"
    count = "" if entries is None else f"{len(entries)} kernel configurations "
    message = f"sm_{arch}: {count}{how}"
    payload = {"arch": arch, "available": entries is not None, "message": message}
    payload |= {"fingerprint": current, "kernels": entries or []}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    for entry in entries or []:
        where = {"config": f"kernel:{entry['kernel']} {entry['config']}", "dtype": entry["dtype"]}
        for metric in CSV_METRICS:
            rec.add(None, "triton", metric, entry[metric], f"static, sm_{arch}", **where)
    if entries:
        (path.parent / "kernel_report.md").write_text(format_table(entries) + "\n")
    rec.add(None, "triton", "info", note=f"kernel report: {message}", config="kernels")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(_SM), help="SM version")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--workers", type=int, default=None, help="parallel compilers")
    parser.add_argument("--first-call", action="store_true", help="compiles of a first call")
    args = parser.parse_args(argv)
    if args.first_call:
        report = {d: first_call(d) for d in ("bfloat16", "float32")}
        text = "\n\n".join(
            f"{dtype}: {sum(len(r['configs']) for r in rows)} compiles\n"
            + format_table(rows, _FIRST_CALL)
            for dtype, rows in report.items()
        )
    else:
        report = kernel_report(args.arch, workers=args.workers)
        text = format_table(report)
    print(json.dumps(report, indent=1) if args.json else text)


if __name__ == "__main__":
    main()
