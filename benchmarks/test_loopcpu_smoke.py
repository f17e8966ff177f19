"""loopcpu.py, run small: the wrapper still finds every function it times
(a renamed one fails here), counts the stages each build ran, and prints a
row per part and the totals, then where the loop's wall time went (no
timings are asserted)."""

from __future__ import annotations

from pathlib import Path

import loopcpu
import pytest


@pytest.mark.parametrize(
    ("kind", "ran"), [([], 3), (["--clean"], 12), (["--fresh"], 12)], ids=["incremental", "clean", "fresh"]
)
def test_it_times_each_part_of_the_loop_per_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: list[str], ran: int
) -> None:
    assert loopcpu.main(["--width", "3", "--depth", "4", "--runs", "2", "--dir", str(tmp_path), *kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    # an edit in the middle layer of 3 x 4 reruns its stage and the two below it
    assert lines[0].startswith(f"12 stages, -j2, {'clean' if kind else 'incremental'} builds")
    assert f", {ran} run each, median of 2" in lines[0]
    parts = lines[3 : lines.index("the loop's wall time, per stage run (microseconds)")]
    rows = {line.split()[0]: line.split()[1:] for line in parts}
    assert list(rows) == [p[0] for p in loopcpu.PARTS] + ["loop", "other"]
    assert any(line.startswith("  waiting for a CPU") for line in lines)  # (Linux: /proc/thread-self/schedstat)
    assert any(line.startswith("the CPUs were idle") for line in lines)
    started = float(rows["clone"][1]) + float(rows["spawn"][1])
    assert float(rows["start"][0]) > 0 and started > 0  # the stages were started under the wrapper
    assert float(rows["create"][1]) > 0  # their `> FILE`s opened by the loop (spawn._opened), timed apart
    out = tmp_path / "pivotbuild" / "out"
    assert len(list(out.iterdir())) == 12
    if kind == ["--fresh"]:  # (each run in a project of its own, built whole)
        assert all(len(list((tmp_path / f"fresh {i}" / "out").iterdir())) == 12 for i in range(2))
