"""py_stages.py, run small: every kind of stage builds (and writes what it
should); it prints one row per kind (no timings are asserted)."""

from __future__ import annotations

from pathlib import Path

import py_stages
import pytest


def test_it_builds_each_kind_of_stage_and_prints_a_row_for_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert py_stages.main(["--stages", "3", "--runs", "1", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 stages, -j2, clean builds, median of 1 (seconds; per stage in ms)"
    assert [line[:20].strip() for line in lines[2:]] == [
        "py: steps:noop",
        "run: true",
        "py: steps:touch",
        "run: echo x > $@",
    ]
    for project in ("p2", "p3"):  # the py: stages and the shell ones wrote the same outputs
        assert sorted(p.name for p in (tmp_path / project / "o").iterdir()) == ["0.txt", "1.txt", "2.txt"]
        assert (tmp_path / project / "o" / "2.txt").read_text() == "x\n"
