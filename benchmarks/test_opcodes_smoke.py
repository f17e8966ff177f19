"""opcodes.py, run small: the tracer counts the loop's opcodes per stage in a
clean and an incremental build, by module and by function, and the build it
traces still builds (no count is asserted beyond being there)."""

from __future__ import annotations

from pathlib import Path

import opcodes
import pytest


@pytest.mark.parametrize(("kind", "ran"), [([], 3), (["--clean"], 12)], ids=["incremental", "clean"])
def test_it_counts_the_loops_opcodes_per_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: list[str], ran: int
) -> None:
    assert opcodes.main(["--width", "3", "--depth", "4", "--top", "200", "--dir", str(tmp_path), *kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    # an edit in the middle layer of 3 x 4 reruns its stage and the two below it
    assert lines[0] == f"12 stages, -j2, {'a clean build (plan kept)' if kind else 'an incremental build'}, {ran} run"
    assert lines[1].startswith("the loop's thread: ") and lines[1].endswith(" opcodes per stage run")
    assert int(lines[1].split()[3].replace(",", "")) > 0
    split = lines.index("   opcodes  calls  function")
    modules, functions = lines[3:split], lines[split + 1 :]
    assert "pivotbuild/build/run.py" in [row.split()[1] for row in modules]
    assert all(row.rstrip().endswith(")") for row in functions)
    assert any("BuildRun._start (pivotbuild/build/run.py:" in row for row in functions)
    out = tmp_path / "pivotbuild" / "out"
    assert len(list(out.iterdir())) == 12
