"""The static kernel report (registers, spills, load widths), when it exists.

``ddsm_triton.bench.kernel_report`` compiles the Triton kernels for a GPU
architecture without needing one and reads the resource usage from the cubin. It is
written separately and may be missing or broken at any given commit, so it is
imported lazily here and any failure becomes a plain message instead of a crash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .records import Recorder

#: The numeric fields of a kernel-report entry that go into the CSV.
REPORT_METRICS = ("registers", "stack_bytes", "local_bytes", "shared_bytes", "widest_load_bits")


def collect(arch: int) -> tuple[list[dict] | None, str]:
    """Run ``kernel_report(arch)``; return (entries, message) or (None, why not)."""
    try:
        from . import kernel_report as module
    except Exception as err:  # missing module or a broken import: both mean "unavailable"
        return None, f"ddsm_triton.bench.kernel_report unavailable ({type(err).__name__}: {err})"
    report = getattr(module, "kernel_report", None)
    if not callable(report):
        return None, "ddsm_triton.bench.kernel_report has no kernel_report(arch) function"
    try:
        entries = [dict(entry) for entry in report(arch)]
    except Exception as err:
        return None, f"kernel_report({arch}) failed ({type(err).__name__}: {err})"
    return entries, f"{len(entries)} kernel configurations compiled for sm_{arch}"


def fingerprint() -> str:
    """Hash of everything the report depends on: kernel sources, the report, Triton.

    Compiling every kernel configuration takes minutes on a small CPU; when this
    hash matches the one stored next to a previous report, that report is reused.
    """
    digest = hashlib.sha256()
    try:
        import triton

        import ddsm_triton.kernels as kernels

        digest.update(triton.__version__.encode())
        sources = sorted(Path(kernels.__file__).parent.glob("*.py"))
    except Exception as err:  # no kernels: nothing to reuse either
        return f"unavailable ({type(err).__name__})"
    for source in [*sources, Path(__file__).with_name("kernel_report.py")]:
        if source.exists():
            digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def collect_cached(arch: int, path: Path) -> tuple[list[dict] | None, str]:
    """Like :func:`collect`, but reuse ``path`` if it was made from the same sources."""
    current = fingerprint()
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    if (
        previous.get("available")
        and previous.get("arch") == arch
        and previous.get("fingerprint") == current
    ):
        entries = previous.get("kernels", [])
        return entries, (
            f"{len(entries)} kernel configurations for sm_{arch}, reused from {path.name} "
            f"(kernel sources unchanged, fingerprint {current}; delete it to recompile)"
        )
    return collect(arch)


def write(entries: list[dict] | None, message: str, arch: int, path: Path) -> None:
    """kernel_report.json: the entries, or why there are none."""
    payload = {"arch": arch, "available": entries is not None, "message": message}
    payload["fingerprint"] = fingerprint()
    payload["kernels"] = entries or []
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def record(entries: list[dict], recorder: Recorder) -> None:
    """One CSV row per kernel and numeric field (config 'kernel:<name> <config>')."""
    for entry in entries:
        config = f"kernel:{entry.get('kernel', '?')} {entry.get('config', '')}".strip()
        for metric in REPORT_METRICS:
            if metric in entry:
                recorder.add(
                    None,
                    "triton",
                    metric,
                    entry[metric],
                    f"static, sm_{entry.get('arch', '')}",
                    config=config,
                    dtype=str(entry.get("dtype", "")),
                )
