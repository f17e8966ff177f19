"""layers.py, run small: both tools build every layer of fresh projects, and
it prints a row per layer and one in all (no timings are asserted)."""

from __future__ import annotations

from pathlib import Path

import layers
import pytest


def test_a_layer_spans_from_the_end_of_the_one_before_to_its_last_stage() -> None:
    ends = {"s0_0": 0.5, "s0_1": 0.7, "out/1_0.txt": 0.9, "s1_1": 1.2, "out/2_0.txt": 1.25}
    assert layers.spans(ends, 3) == pytest.approx([0.7, 0.5, 0.05])


@pytest.mark.parametrize("mode", ["copy", "hardlink"])
def test_it_prints_each_layer_against_ninja(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str) -> None:
    argv = ["--width", "3", "--depth", "4", "--runs", "2", "--shape", "big", "--mode", mode, "--dir", str(tmp_path)]
    assert layers.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    kind = "pivotbuild:hardlink" if mode == "hardlink" else "pivotbuild"
    assert lines[0].startswith(f"12 stages (big outputs, {kind}), -j2, clean builds of fresh projects")
    rows = [line.split() for line in lines[2:-2]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "in"]
    assert all(float(r[-3]) > 0 and float(r[-2]) >= 0 for r in rows)  # both tools built every layer
    use = [line.split() for line in lines[-2:]]
    assert [u[0] for u in use] == ["busy", "idle"]
    # (ticks of 10 ms: a short build may fall between them, but pivotbuild's, with its interpreter, spans several)
    assert float(use[0][1]) + float(use[1][1]) > 0 and min(float(v) for u in use for v in u[1:3]) >= 0
    assert not list(tmp_path.iterdir())  # each run's projects removed after it
