"""The CSV of measurements: one row per (case, impl, metric), long format.

Long format keeps the schema fixed while metrics come and go by device (peak
memory and bandwidth exist only on CUDA): a row is a fact, ``note`` says how it
was obtained or why a value is missing, and plots and the summary are built from
the rows alone, so ``--replot`` can redraw them from a committed CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path

from .configs import Case

#: Column order of results.csv. The shape columns are the fields of ``Case``.
SHAPE_COLUMNS = (
    "kind",
    "batch",
    "map_h",
    "map_w",
    "dim",
    "grid_h",
    "grid_w",
    "groups",
    "samples",
    "dk",
    "dv",
)
COLUMNS = (
    "device",
    "torch",
    "triton",
    "config",
    *SHAPE_COLUMNS,
    "dtype",
    "impl",
    "metric",
    "value",
    "unit",
    "note",
)

#: Units of the metrics written by the runner (documentation and a test's oracle).
METRIC_UNITS = {
    "fwd_ms_p50": "ms",
    "fwd_ms_p20": "ms",
    "fwd_ms_p80": "ms",
    "fwdbwd_ms_p50": "ms",
    "fwdbwd_ms_p20": "ms",
    "fwdbwd_ms_p80": "ms",
    "saved_bytes": "bytes",
    "saved_activation_bytes": "bytes",
    "saved_fake_minus_real": "bytes",
    "peak_fwd_bytes": "bytes",
    "peak_fwdbwd_bytes": "bytes",
    "floor_fwd_bytes": "bytes",
    "floor_fwdbwd_bytes": "bytes",
    "bw_frac_fwd": "fraction",
    "bw_frac_fwdbwd": "fraction",
    "check_rel_err": "rel",
    "parity_rel_err": "rel",
    "compile_s": "s",
    "copy_bandwidth": "GB/s",
    "skipped": "",
    "error": "",
    "info": "",
    "wall_s": "s",
    "registers": "count",
    "stack_bytes": "bytes",
    "local_bytes": "bytes",
    "shared_bytes": "bytes",
    "widest_load_bits": "bits",
}


class Recorder:
    """Collects rows in memory; every row carries the device and library versions."""

    def __init__(self, device: str, torch_version: str, triton_version: str) -> None:
        self.env = {"device": device, "torch": torch_version, "triton": triton_version}
        self.rows: list[dict[str, str]] = []

    def add(
        self,
        case: Case | None,
        impl: str,
        metric: str,
        value: float | int | str = "",
        note: str = "",
        *,
        config: str | None = None,
        unit: str | None = None,
        dtype: str | None = None,
    ) -> None:
        """Append one row; ``case`` None is a device-level fact (shape columns empty)."""
        shape = dict.fromkeys(SHAPE_COLUMNS, "")
        row_config, row_dtype = config or "", dtype or ""
        if case is not None:
            fields = dataclasses.asdict(case)
            shape = {c: str(fields[c]) for c in SHAPE_COLUMNS}
            row_config, row_dtype = config or case.config, dtype or case.dtype
        self.rows.append(
            {
                **self.env,
                "config": row_config,
                **shape,
                "dtype": row_dtype,
                "impl": impl,
                "metric": metric,
                "value": _format_value(value),
                "unit": METRIC_UNITS.get(metric, "") if unit is None else unit,
                "note": note,
            }
        )

    def write(self, path: Path) -> None:
        write_csv(path, self.rows)


def _format_value(value: float | int | str) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: Iterable[dict[str, str]]) -> None:
    """Write rows with exactly ``COLUMNS`` as the header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def as_float(row: dict[str, str]) -> float | None:
    """The row's value as a float, or None when it is empty or not a number."""
    try:
        return float(row["value"])
    except (TypeError, ValueError):
        return None
