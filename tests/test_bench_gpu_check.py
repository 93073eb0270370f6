"""``make gpu-check``'s driver and the GPU profile's extras, cheaply on any machine: the
commands the driver runs, each under its time limit, and the report it writes (the
commands themselves replaced), and the profiler's table."""

from __future__ import annotations

import subprocess

import pytest
import torch

from ddsm_triton.bench import __main__ as bench
from ddsm_triton.bench import gpu_check
from ddsm_triton.bench.cases import plan


def test_each_step_runs_under_its_limit_and_is_reported(tmp_path, monkeypatch) -> None:
    calls = []

    def run(cmd, stdout, stderr, env):
        calls.append((cmd, env))
        stdout.write("ran\n")
        return subprocess.CompletedProcess(cmd, 1 if "pytest" in cmd else 0)

    monkeypatch.setattr(gpu_check.subprocess, "run", run)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 1  # the tier failed
    assert len(calls) == len(gpu_check.LIMITS)
    for (cmd, env), (log, limit) in zip(calls, gpu_check.LIMITS.items(), strict=True):
        assert cmd[:4] == ["timeout", "-k", "20", str(limit)]
        assert (tmp_path / log).read_text() == "ran\n"
        assert "TRITON_INTERPRET" not in env and env["DDSM_CUDA_DRY_RUN"] == "1"
    tests, profile = calls[2][0][4:], calls[3][0][4:]
    assert tests[1:5] == ["-m", "pytest", "-m", "cuda"]
    assert profile[1:4] == ["-m", "ddsm_triton.bench", "--gpu"] and "--dry-run" in profile
    assert profile[profile.index("--out") + 1] == str(tmp_path)
    report = (tmp_path / "gpu_check.md").read_text()
    assert "| pytest_cuda.log | 1 |" in report and "| bench.log | 0 |" in report


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_only_the_dry_run_runs() -> None:
    with pytest.raises(SystemExit):
        gpu_check.main([])


def test_profile_table_has_one_profiler_table_per_kind(tmp_path) -> None:
    cases = [c for c, _ in plan("gpu-dry-run", cuda=False)]
    bench.profile_table(cases, torch.device("cpu"), tmp_path)
    text = (tmp_path / "profile.txt").read_text()
    for kind in ("op:spatial", "op:channel", "module"):
        assert f"reference, {kind} 16x32" in text
    assert text.count("Self CPU time total") == 3
