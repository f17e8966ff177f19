"""watch_latency.py, run small: a real `pivotbuild -w` answers each edit and the
command line rebuilds the same; it prints one row per measure (no timings are
asserted)."""

from __future__ import annotations

from pathlib import Path

import compare
import pytest
import watch_latency


def test_it_times_each_edit_in_watch_mode_and_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert watch_latency.main(["--width", "3", "--depth", "2", "--edits", "2", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "6 stages (3 x 2, small outputs), -j2, --debounce 50"
    rows = [line.rsplit(None, 2)[0] for line in lines[2:]]
    assert rows == [
        "watch: edit -> its stage starts",
        "watch: edit -> rebuild finished",
        "watch: the rebuild itself (engine's time)",
        "command line: the same rebuild (wall time)",
    ]
    # Every output is what its edited sources make it (else SystemExit).
    compare.check_outputs(tmp_path / "project", compare.lattice(3, 2), "small", "pivotbuild")
    assert "edit 3" in (tmp_path / "project" / "src" / "1_0.txt").read_text()  # (the edits were made)
