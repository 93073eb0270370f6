"""The plumbing of ``make gpu-check`` and of the GPU profile, cheaply, on any machine:
the plan, the time budget, checkpointed results, the profiler table, the autotuner dump,
and the driver's time-limited, logged child processes. (The whole chain is dry-run with
``make gpu-check GPU_CHECK_ARGS=--dry-run``, which takes minutes.)"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from ddsm_triton.bench import configs, gpu_check, gpu_profile, records
from ddsm_triton.bench.configs import NAMED, build_gpu_plan


def test_gpu_plan_is_the_named_points_in_both_dtypes_compiles_last() -> None:
    plan = build_gpu_plan()
    points = {(c.kind, (c.map_h, c.map_w), c.dtype) for c in plan.cases}
    assert points == {
        (kind, size, dtype)
        for kind in configs.KINDS
        for size in NAMED
        for dtype in ("bf16", "fp32")
    }
    assert len(plan.cases) == len(points)  # each once
    for case in plan.cases:
        assert (case.batch, case.dim, case.groups, case.samples) == (2, 256, 1, 9)
        assert case.config == NAMED[(case.map_h, case.map_w)]
    compiled = [c for c in plan.cases if c.compile]
    assert {(c.kind, c.dtype) for c in compiled} == {("op:spatial", "fp32"), ("op:channel", "fp32")}
    tail = plan.cases[-len(configs.KINDS) :]  # one whole point, compiles included, last
    assert {(c.map_h, c.map_w, c.dtype) for c in tail} == {(64, 128, "fp32")}
    assert all(c in tail for c in compiled)
    assert plan.cases[0].dtype == "bf16"


def test_gpu_dry_run_plan_keeps_the_structure_with_toy_maps() -> None:
    plan = build_gpu_plan(dry_run=True)
    assert {c.kind for c in plan.cases} == set(configs.KINDS)
    assert {c.dtype for c in plan.cases} == {"bf16", "fp32"}
    assert max(c.pixels for c in plan.cases) <= 16 * 16 and any(c.compile for c in plan.cases)


class _Runner:
    """Stands in for bench.runner.Runner: records the cases it is asked to run."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.ran: list[configs.Case] = []
        self.seconds = seconds

    def run_case(self, case: configs.Case) -> None:
        time.sleep(self.seconds)
        self.ran.append(case)


def _rows_run(tmp_path: Path, budget: gpu_profile.Budget, cases, runner=None):
    recorder = records.Recorder("dev", "t", "tr")
    progress = gpu_profile.CheckpointProgress(len(cases), recorder, tmp_path, enabled=False)
    runner = runner or _Runner()
    for case in cases:
        gpu_profile._run_case(runner, budget, case, recorder, progress)
    return runner, recorder


def test_budget_skips_what_does_not_fit_and_says_why(tmp_path: Path) -> None:
    cases = build_gpu_plan().cases
    over = gpu_profile.Budget(time.perf_counter() - 1, "cuda")
    runner, recorder = _rows_run(tmp_path, over, cases[:2])
    assert runner.ran == []
    skipped = [r for r in recorder.rows if r["metric"] == "skipped"]
    assert len(skipped) == 2 and all("GPU profile budget" in r["note"] for r in skipped)
    # Checkpointed after each case: the CSV on disk already holds both rows.
    with open(tmp_path / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "GPU profile budget" in (tmp_path / "summary.md").read_text()


def test_budget_drops_only_the_compile_when_only_that_does_not_fit(tmp_path: Path) -> None:
    case = next(c for c in build_gpu_plan().cases if c.compile)
    left = gpu_profile.FIRST_CASE_S["cuda"] + gpu_profile.COMPILE_S["cuda"] / 2
    budget = gpu_profile.Budget(time.perf_counter() + left, "cuda")
    runner, recorder = _rows_run(tmp_path, budget, [case])
    assert [c.compile for c in runner.ran] == [False]
    assert [r["impl"] for r in recorder.rows if r["metric"] == "skipped"] == ["compiled"]


def test_budget_guesses_from_the_last_case_of_the_kind() -> None:
    small, large = (configs.make_case("op:spatial", s) for s in ((64, 128), (256, 512)))
    budget = gpu_profile.Budget(time.perf_counter() + 100, "cuda")
    assert budget.estimate(small) == gpu_profile.FIRST_CASE_S["cuda"]
    budget.observe(small, 3.0)
    assert budget.estimate(large) == 6.0  # 16x the pixels, capped at twice the time
    assert budget.estimate(small) == 3.0


def test_profile_rows_name_and_time_the_ops() -> None:
    x = torch.randn(64, 64)
    rows = gpu_profile.profile_rows(lambda: (x @ x).sum(), torch.device("cpu"))
    names = [name for name, _, _ in rows]
    assert any("mm" in name for name in names), names
    assert all(calls >= 1 and us > 0 for _, calls, us in rows)
    assert [us for *_, us in rows] == sorted((us for *_, us in rows), reverse=True)


def test_autotuner_dump_lists_every_kernel(tmp_path: Path) -> None:
    import ddsm_triton.kernels  # noqa: F401  (defines the autotuned kernels)

    gpu_profile.write_autotune_configs(tmp_path)
    entries = json.loads((tmp_path / "autotune_configs.json").read_text())["autotuners"]
    assert len(entries) >= 2
    for entry in entries:
        assert entry["configs"] and entry["key_args"], entry["kernel"]
        assert all("num_warps" in c for c in entry["configs"])


def test_run_logged_streams_and_stops_at_the_limit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "KILL_GRACE_S", 2.0)
    env = gpu_check._child_env(dry_run=False)
    ok = [sys.executable, "-c", "print('one'); print('two')"]
    assert gpu_check.run_logged(ok, tmp_path / "ok.log", 30, env) == 0
    assert "one\ntwo\n" in (tmp_path / "ok.log").read_text()
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    start = time.perf_counter()
    assert gpu_check.run_logged(slow, tmp_path / "slow.log", 1.0, env) == 124
    assert time.perf_counter() - start < 10
    text = (tmp_path / "slow.log").read_text()
    assert "started" in text and "[exit status 124]" in text


def test_children_never_interpret_on_the_gpu(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET" not in gpu_check._child_env(dry_run=False)
    assert gpu_check._child_env(dry_run=True)["DDSM_CUDA_DRY_RUN"] == "1"
    assert "DDSM_CUDA_DRY_RUN" not in gpu_check._child_env(dry_run=False)
    cmd = gpu_check.tests_command(workers=3, dry_run=False)
    assert cmd[-2:] == ["-n", "3"] and cmd[3:5] == ["-m", "cuda"]


def test_gpu_check_writes_its_report_and_environment(tmp_path: Path, capsys) -> None:
    argv = ["--dry-run", "--skip-tests", "--skip-bench", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    info = json.loads((tmp_path / "versions.json").read_text())
    assert info["torch"] == torch.__version__
    assert (tmp_path / "nvidia-smi.txt").read_text()
    report = (tmp_path / "gpu_check.md").read_text()
    assert "--skip-tests" in report and "Total:" in report
    assert "gpu-check: total" in capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [False, True])
def test_bench_command_targets_the_profile(dry_run: bool, tmp_path: Path) -> None:
    cmd = gpu_check.bench_command(tmp_path, 123.4, dry_run, ["--no-compile"])
    assert cmd[1:4] == ["-m", "ddsm_triton.bench", "--gpu"]
    assert "123" in cmd and cmd[-1] == "--no-compile"
    assert ("--dry-run" in cmd) == dry_run
