"""creation.py, run small: it creates and removes files round after round,
spawns md5sum three ways and prints a line for each (no timings are
asserted), leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import creation
import pytest


def test_it_prints_each_round_and_each_spawn_and_cleans_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert creation.main(["--dir", str(tmp_path), "--files", "20", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "a journal: " in lines[0]
    assert lines[0].split("a journal: ")[1].split(";")[0] in ("yes", "no") or "unknown" in lines[0]
    names = [line.rsplit(None, 1)[0].strip() for line in lines[1:]]
    assert names == ["create, round 1", "create, round 2", "spawn", "spawn+new", "spawn+trunc"]
    assert all(float(line.split()[-1]) > 0 for line in lines[1:])
    assert list(tmp_path.iterdir()) == []
