"""cores.py, run small: every build of every tool gets its figures (no
timings are asserted), and the figures are read from /proc/stat as the
kernel lays it out."""

from __future__ import annotations

from pathlib import Path

import compare
import cores
import pytest


def test_each_tool_gets_its_clean_and_incremental_figures(capsys: pytest.CaptureFixture[str]) -> None:
    timed = compare.timed
    assert cores.main(["--tools", "pivotbuild,make,ninja", "--width", "3", "--depth", "2", "--runs", "2"]) == 0
    assert compare.timed is timed  # (put back)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("6 stages (3 x 2, big outputs), -j2, ")
    assert [line.split()[0] for line in lines[3:]] == ["pivotbuild", "make", "ninja"]
    for line in lines[3:]:
        figures = [float(x) for x in line.split()[1:]]
        assert len(figures) == 10  # wall, busy, iowait, steal, core-s: clean, then incremental
        assert all(f >= 0 for f in figures)
        assert figures[0] > 0 and figures[5] > 0


def test_the_cores_are_the_shares_of_the_ticks_between_two_readings(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 40 0 10 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    before = cores.ticks(str(stat))
    assert before == (1000, 800, 40, 0)
    stat.write_text("cpu  250 0 100 900 80 0 30 40 7 0\n")
    after = cores.ticks(str(stat))
    # 400 ticks (guest time is in user's already): 100 idle, 40 in I/O wait, 40 stolen, 220 busy
    assert cores.cores(before, after, 2) == pytest.approx((2 * 220 / 400, 2 * 40 / 400, 2 * 40 / 400))
    assert cores.cores(after, after, 2) == (0.0, 0.0, 0.0)


def test_a_tool_short_of_builds_is_reported() -> None:
    record = [("make", (0.1, 1.0, 0.0, 0.0))] * 2
    with pytest.raises(SystemExit, match="make ran 2 builds, not 5"):
        cores.split(record, "make", 2)
