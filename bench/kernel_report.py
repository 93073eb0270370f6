"""Static report of every Triton kernel the library can launch, compiled for a real GPU
without one.

For each launch site in ``ddsm_triton.kernels.KERNEL_VARIANTS``, each of its
configurations, each of its report widths (the block shape follows from the widths)
and each input dtype, the kernel is compiled to a cubin for
``sm_<arch>`` and the ``cuobjdump`` shipped with Triton reads back its resource usage
and SASS: registers, stack / local bytes (spills), shared memory, and the widest
global load (``LDG``) in bits.

    python -m ddsm_triton.bench.kernel_report --arch 90 [--json]

Compilation assumes what a typical launch specialises on: 16-byte aligned pointers
and channel counts (``DK``, ``DV``, ``D``) divisible by 16. Compiling does not work
inside the Triton interpreter, so under ``TRITON_INTERPRET=1`` :func:`kernel_report`
re-runs this module in a subprocess with the variable unset.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = ["DTYPES", "format_table", "kernel_report"]

DTYPES = ("float32", "float16", "bfloat16", "float64")
# Integer arguments that hold channel counts; launches specialise them as multiples of 16.
_CHANNEL_ARGS = frozenset({"DK", "DV", "D"})
_TRITON_TYPES = {
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
    "float64": "fp64",
    "int32": "i32",
    "int64": "i64",
}
_FIELDS = ("registers", "stack_bytes", "local_bytes", "shared_bytes", "widest_load_bits")


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _config_label(config) -> str:
    blocks = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{blocks},warps={config.num_warps},stages={config.num_stages}"


def _widths_label(widths: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in widths.items())


def _jobs(arch: int) -> list[tuple[int, int, int, str, int]]:
    import torch

    from ddsm_triton.kernels import KERNEL_VARIANTS

    return [
        (v, c, w, dtype, arch)
        for v, variant in enumerate(KERNEL_VARIANTS)
        for w in range(len(variant.widths))
        for dtype in DTYPES
        for c in range(len(variant.configs(getattr(torch, dtype))))
    ]


def _compile_one(job: tuple[int, int, int, str, int]) -> dict:
    """Compile one (variant, config, widths, dtype, arch) and read its cubin back. The
    block shape follows from the config and the widths (``variant.constexprs``)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from ddsm_triton.kernels import KERNEL_VARIANTS

    v, c, w, dtype_name, arch = job
    variant = KERNEL_VARIANTS[v]
    dtype = getattr(torch, dtype_name)
    config = variant.configs(dtype)[c]
    widths = variant.widths[w]
    fn = variant.kernel
    while not isinstance(fn, JITFunction):  # under the autotuner and the heuristics
        fn = fn.fn
    constexprs = variant.constexprs(config, widths, dtype)
    pointers = variant.pointer_dtypes(dtype)
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + _TRITON_TYPES[str(pointers[name]).removeprefix("torch.")]
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name in _CHANNEL_ARGS:
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)

    usage, sass = _inspect_cubin(compiled.asm["cubin"])

    def field(name: str) -> int:
        match = re.search(rf"\b{name}:(\d+)", usage)
        return int(match.group(1)) if match else 0

    return {
        "kernel": variant.name,
        "config": _config_label(config),
        "widths": _widths_label(widths),
        "dtype": dtype_name,
        "arch": arch,
        "registers": field("REG"),
        "stack_bytes": field("STACK"),
        "local_bytes": field("LOCAL"),
        "shared_bytes": field("SHARED"),
        "widest_load_bits": _widest_load_bits(sass),
    }


def _inspect_cubin(cubin: bytes) -> tuple[str, str]:
    """``cuobjdump`` resource usage and SASS of a cubin. Disassembly takes about a
    second, so results are cached (in Triton's cache directory) by the cubin's hash."""
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(hashlib.sha256(cubin).hexdigest())
    cached = cache.get_file("cuobjdump.json")
    if cached is not None:
        return tuple(json.loads(Path(cached).read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage, sass = (
            subprocess.run(
                [_cuobjdump(), flag, str(path)], check=True, capture_output=True, text=True
            ).stdout
            for flag in ("--dump-resource-usage", "--dump-sass")
        )
    cache.put(json.dumps([usage, sass]), "cuobjdump.json", binary=False)
    return usage, sass


def _widest_load_bits(sass: str) -> int:
    """Width of the widest global load: ``LDG.E.128`` is 128 bits, ``LDG.E.64`` 64,
    ``LDG.E.U16`` 16, a plain ``LDG.E`` 32."""
    widest = 0
    for opcode in re.findall(r"\bLDG(?:\.[A-Z0-9_]+)*", sass):
        suffixes = opcode.split(".")[1:]
        bits = 32
        for suffix in suffixes:
            if suffix in ("128", "64"):
                bits = int(suffix)
            elif suffix in ("U16", "S16"):
                bits = 16
            elif suffix in ("U8", "S8"):
                bits = 8
        widest = max(widest, bits)
    return widest


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_report(arch: int, *, workers: int | None = None) -> list[dict]:
    """Compile every kernel in every configuration and dtype for ``sm_<arch>``.

    Returns one dict per (kernel, config, dtype) with keys ``kernel``, ``config``,
    ``dtype``, ``arch``, ``registers``, ``stack_bytes``, ``local_bytes``,
    ``shared_bytes`` and ``widest_load_bits``. Needs no GPU.
    """
    if _interpreted():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        command = [sys.executable, "-m", "ddsm_triton.bench.kernel_report"]
        command += ["--arch", str(arch), "--json"]
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        return json.loads(done.stdout)
    jobs = _jobs(arch)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_compile_one, jobs))


def format_table(rows: list[dict]) -> str:
    """Readable fixed-width table of :func:`kernel_report` rows."""
    headers = (
        "kernel",
        "config",
        "widths",
        "dtype",
        "regs",
        "stack",
        "local",
        "shared",
        "ldg bits",
    )
    cells = [
        (r["kernel"], r["config"], r.get("widths", ""), r["dtype"], *(str(r[f]) for f in _FIELDS))
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version, e.g. 80 or 90")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--workers", type=int, default=None, help="parallel compilers")
    args = parser.parse_args(argv)
    rows = kernel_report(args.arch, workers=args.workers)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


if __name__ == "__main__":
    main()
