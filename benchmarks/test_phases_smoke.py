"""phases.py, run small: the wrapper still finds every function it times
(a renamed one fails here), and it prints a row per phase and the totals
(no timings are asserted)."""

from __future__ import annotations

from pathlib import Path

import compare
import phases
import pytest


@pytest.mark.parametrize(
    "kind",
    [[], ["--clean"], ["--fresh"], ["--shape", "big"], ["--shape", "big", "--mode", "hardlink", "--warm", "2"]],
    ids=["incremental", "clean", "fresh", "big", "hardlink"],
)
def test_it_times_every_phase_of_a_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kind: list[str]
) -> None:
    released: list[int] = []
    release = compare.warm

    def releasing(mb: int) -> None:
        if mb:
            released.append(mb << 20)
        release(mb)

    monkeypatch.setattr(compare, "warm", releasing)
    assert phases.main(["--width", "3", "--depth", "4", "--runs", "1", "--dir", str(tmp_path), *kind]) == 0
    # with --warm, memory freed before each of the three builds (as run, forked, ninja's)
    assert released == ([2 << 20] * (3 if compare.find("ninja") else 2) if "--warm" in kind else [])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("12 stages, -j2, ")
    names = [line.split()[0] for line in lines[1:]]
    assert names[: len(phases.PHASES) + 2] == [p.split()[0] for p in phases.PHASES] + ["total", "forked"]
    stages = next(line for line in lines if line.split()[0] == "stages")
    assert float(stages.split()[-1]) > 0  # the stages ran under the wrapper
    if "--fresh" in kind:  # (a project's first build: its Pivotfile compiled, counted as `plan`)
        assert "fresh projects (the Pivotfile compiled)" in lines[0]
        plan = next(line for line in lines if line.split()[0] == "plan")
        assert float(plan.split()[-1]) > 0
    out = tmp_path / ("fresh 0" if "--fresh" in kind else "pivotbuild") / "out"
    assert len(list(out.iterdir())) == 12  # and built what they should
    made = (out / "3_0.txt").read_text()  # the big shape's `cat` of its source and two outputs, or md5sum's sums
    assert made.startswith("source 3 0\n") == ("big" in kind), made
    # hardlink mode's outputs are their cache objects (a second link), the copy mode's are not
    assert ((out / "3_0.txt").stat().st_nlink == 2) == ("hardlink" in kind)
