"""resident.py, run small: it finds every function it times (a renamed one
fails here), its builds succeed, and it prints a row per part (no timings
are asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import resident


@pytest.mark.parametrize("edit", ["middle", "last"])
def test_it_times_the_parts_of_resident_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str) -> None:
    argv = ["--width", "3", "--depth", "4", "--runs", "2", "--edit", edit, "--dir", str(tmp_path)]
    assert resident.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("12 stages, -j2, 2 resident builds")
    assert [line.split("  ")[0].strip() for line in lines[1:]] == [
        "total",
        *(p[0] for p in resident.PARTS),
        "after answer",
    ]
    stages = next(line for line in lines if line.startswith("stages"))
    assert float(stages.split()[-1]) > 0  # the builds ran their stages in this process
    edited = (tmp_path / "pivotbuild" / "src" / ("3_0.txt" if edit == "last" else "2_0.txt")).read_text()
    assert "resident" in edited
