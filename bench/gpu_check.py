"""``make gpu-check``: the library proved and measured on a GPU machine in one command,
into bench/results/<card>/: versions.txt (``torch.utils.collect_env``), nvidia-smi.txt,
the CUDA tier (``pytest -m cuda``, pytest_cuda.log), the GPU profile (``python -m
ddsm_triton.bench --gpu``, bench.log and its files), and gpu_check.md (each step's exit
status, 124 if stopped at its time limit by ``timeout``, and seconds). It uses the Python
that runs it: no environment, no registry. ``--dry-run``: the same on CPU, toy shapes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .records import results_dir

#: Seconds per step: with make's editable install, the whole check ends within 10 minutes.
LIMITS = {"versions.txt": 60, "nvidia-smi.txt": 30, "pytest_cuda.log": 210, "bench.log": 240}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m ddsm_triton.bench.gpu_check", description=__doc__)
    p.add_argument("--dry-run", action="store_true", help="CPU, toy shapes: the plumbing only")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<card>)")
    args = p.parse_args(argv)
    import torch

    if not (args.dry_run or torch.cuda.is_available()):
        p.error("no CUDA device here; --dry-run checks the plumbing on CPU")
    dry, card = args.dry_run, None if args.dry_run else torch.cuda.get_device_name()
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if dry else results_dir(card))
    out.mkdir(parents=True, exist_ok=True)
    py, env = sys.executable, dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)  # never interpret on a GPU
    tests = [py, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", "tests"]
    bench = [py, "-m", "ddsm_triton.bench", "--gpu", "--quiet", "--out", str(out)]
    if dry:  # on CPU, where inductor would compile for minutes
        env["DDSM_CUDA_DRY_RUN"] = "1"
        bench += ["--dry-run", "--compiler", "eager"]
    elif importlib.util.find_spec("xdist"):
        tests += ["-n", "4"]
    commands = [[py, "-m", "torch.utils.collect_env"], ["nvidia-smi"], tests, bench]
    status, lines = {}, ["| output | exit status | seconds |", "|---|---:|---:|"]
    for (log, limit), cmd in zip(LIMITS.items(), commands, strict=True):
        print(f"gpu-check: {' '.join(cmd[:4])} ... (limit {limit} s) > {out / log}", flush=True)
        start, timed = time.perf_counter(), ["timeout", "-k", "20", str(limit), *cmd]
        with open(out / log, "w") as f:
            status[log] = subprocess.run(
                timed, stdout=f, stderr=subprocess.STDOUT, env=env
            ).returncode
        lines.append(f"| {log} | {status[log]} | {time.perf_counter() - start:.0f} |")
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        print(lines[-1], flush=True)
    return max(status["pytest_cuda.log"], status["bench.log"])


if __name__ == "__main__":
    sys.exit(main())
