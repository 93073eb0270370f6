"""The static kernel report in ``make bench``: kernel_report.json, reused while the
kernel sources and Triton are unchanged (compiling every configuration takes minutes on
a small CPU), and its numbers as CSV rows. A failure becomes a message, not a crash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: The numeric fields of a kernel-report entry that go into the CSV.
REPORT_METRICS = ("registers", "spill_bytes", "shared_bytes", "warps_per_sm", "bar_sync")
REPORT_METRICS += ("widest_load_bits", "reductions", "shuffles")


def collect(arch: int) -> tuple[list[dict] | None, str]:
    """``kernel_report(arch)``: (entries, message), or (None, why there are none)."""
    try:
        from .kernel_report import kernel_report

        entries = kernel_report(arch)
    except Exception as err:  # a broken report must not lose the benchmark's results
        return None, f"kernel report for sm_{arch} failed ({type(err).__name__}: {err})"
    return entries, f"{len(entries)} kernel configurations compiled for sm_{arch}"


def fingerprint() -> str:
    """Hash of what the report depends on: kernel sources, the report, Triton."""
    import triton

    import ddsm_triton.kernels as kernels

    digest = hashlib.sha256(triton.__version__.encode())
    for source in sorted(Path(kernels.__file__).parent.rglob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(Path(__file__).with_name("kernel_report.py").read_bytes())
    return digest.hexdigest()[:16]


def collect_cached(arch: int, path: Path) -> tuple[list[dict] | None, str]:
    """Like :func:`collect`, but reuse ``path`` if it was made from the same sources."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    current = fingerprint()
    if previous.get("available") and (previous.get("arch"), previous.get("fingerprint")) == (
        arch,
        current,
    ):
        entries = previous.get("kernels", [])
        return entries, f"{len(entries)} kernel configurations for sm_{arch}, reused ({current})"
    return collect(arch)


def write(entries: list[dict] | None, message: str, arch: int, path: Path) -> None:
    """kernel_report.json: the entries, or why there are none."""
    payload = {"arch": arch, "available": entries is not None, "message": message}
    payload |= {"fingerprint": fingerprint(), "kernels": entries or []}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def record(entries: list[dict], recorder) -> None:
    """One CSV row per kernel and numeric field (config 'kernel:<name> <config>')."""
    for entry in entries:
        config = f"kernel:{entry.get('kernel', '?')} {entry.get('config', '')}".strip()
        for metric in REPORT_METRICS:
            if metric in entry:
                note = f"static, sm_{entry.get('arch', '')}"
                dtype = str(entry.get("dtype", ""))
                recorder.add(
                    None, "triton", metric, entry[metric], note, config=config, dtype=dtype
                )
