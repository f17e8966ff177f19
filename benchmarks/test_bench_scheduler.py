"""Benchmark of the scheduler's overhead: `pivotbuild -B -s -j2` (a real process) on
1,000 independent stages that run `true` and have no outs, so nearly all the time
is pivotbuild's own: deciding, starting a shell per stage, recording results."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from compare import pivotbuild_command
from pytest_benchmark.fixture import BenchmarkFixture

STAGES = 1000


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sched")
    (root / ".pivot").mkdir()
    (root / "Pivotfile").write_text("".join(f"stage t{i}:\n    run: true\n\n" for i in range(STAGES)))
    return root.resolve()


def test_scheduler_1k_true(benchmark: BenchmarkFixture, project: Path) -> None:
    command = [*pivotbuild_command(), "-B", "-s", "-j2"]

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300, check=False)

    proc = benchmark.pedantic(build, rounds=3, warmup_rounds=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"pivotbuild: {STAGES} ran, 0 up to date, 0 restored, 0 failed in "), proc.stderr
    if benchmark.stats is not None:
        benchmark.extra_info["ms/stage"] = round(benchmark.stats.stats.median / STAGES * 1e3, 2)
