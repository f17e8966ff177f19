"""flushes.py, run small: it reports each way of writing and each gap, and
leaves nothing behind (no timings are asserted)."""

from __future__ import annotations

from pathlib import Path

import flushes
import pytest


def test_it_reports_each_way_and_each_gap_and_cleans_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert flushes.main(["--dir", str(tmp_path), "--mb", "8", "--rounds", "1", "--gaps", "0,0.01"]) == 0
    assert list(tmp_path.iterdir()) == []  # its files removed, directory and all
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("the device: ")
    assert lines[1] == "8 MB written, then a small fsync, then another (ms, each round)"
    ways = [line.strip() for line in lines[2:-3]]
    assert [w.split("  ")[0] for w in ways][:2] == ["through the page cache", "the same, writeback begun"]
    assert all(len(w.split("  ")[-1].split(" / ")) == 3 for w in ways)
    assert lines[-3] == "a small fsync a gap after the one before, under writeback (ms, median of 5)"
    assert [line.split()[:3] for line in lines[-2:]] == [["gap", "0.00", "s"], ["gap", "0.01", "s"]]
