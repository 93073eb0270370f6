"""results.csv: a row per measurement; ``note`` says how, or why a value is missing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from .cases import Case

SHAPE = tuple(f.name for f in dataclasses.fields(Case))
COLUMNS = ("device", "torch", "triton", *SHAPE, "backend", "metric", "value", "unit", "note")
UNITS = {"_ms": "ms", "_bytes": "bytes", "_s": "s", "_gbps": "GB/s", "_err": "rel"}


class Recorder:
    """Collects the rows; each carries the device and the library versions."""

    def __init__(self, device: str, torch_version: str, triton_version: str) -> None:
        self.env = {"device": device, "torch": torch_version, "triton": triton_version}
        self.rows: list[dict] = []

    def add(self, case: Case | None, backend: str, metric: str, value="", note="", **where):
        """One row; ``case`` None: a fact about the device or the run; ``where`` sets
        columns (config, dtype) of such a row."""
        value = float(f"{value:.6g}") if isinstance(value, float) else value
        unit = next((u for end, u in UNITS.items() if metric.endswith(end)), "")
        facts = {"backend": backend, "metric": metric, "value": value, "unit": unit, "note": note}
        shape = dataclasses.asdict(case) if case else {}
        self.rows.append({**self.env, **shape, **where, **facts})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    def write(self, path: Path) -> None:
        self.frame().to_csv(path, index=False)


def results_dir(device: str) -> Path:
    """bench/results/<device>: 'cpu', or the card's name ('nvidia-h200')."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return Path(__file__).resolve().parent / "results" / slug
