"""floor.py, run small: ninja and each minimal Python loop build the lattice
clean and incrementally (each build's outputs checked against what its deps
say); it prints a row per loop (no timings are asserted)."""

from __future__ import annotations

import shutil

import floor
import pytest


def test_each_loop_builds_the_lattice_beside_ninja(capsys: pytest.CaptureFixture[str]) -> None:
    assert floor.main(["--width", "3", "--depth", "4", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("12 stages (small), -j2, 1 rounds")
    assert [line.split()[0] for line in lines[2:]] == ["ninja", *floor.LEVELS]
    assert all(line.count("x)") == 2 for line in lines[2:])
    # each loop (not ninja) says its own CPU per stage of the clean build
    assert [line.endswith(" us") for line in lines[2:]] == [False] + [True] * len(floor.LEVELS)
    assert all(float(line.split()[-2]) > 0 for line in lines[3:])


def test_busy_adds_a_row_per_level_with_the_loop_s_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert floor.main(["--width", "3", "--depth", "3", "--rounds", "1", "--levels", "+state", "--busy", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["ninja", "+state", "+state+50"]


def test_pivotbuild_builds_beside_the_loops_in_the_same_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    assert floor.main(["--width", "3", "--depth", "3", "--rounds", "1", "--levels", "+contract", "--pivotbuild"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["ninja", "pivotbuild", "+contract"]
    # pivotbuild's row has no loop CPU (it is not one of our loops)
    assert [line.endswith(" us") for line in lines[2:]] == [False, False, True]


def test_resident_adds_the_loop_kept_between_builds_behind_its_clients(capsys: pytest.CaptureFixture[str]) -> None:
    assert floor.main(["--width", "3", "--depth", "3", "--rounds", "1", "--levels", "+state", "--resident"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[2:]]
    assert names == ["ninja", "+state", *(["resident"] if shutil.which("cc") else []), "resident-py"]
    assert all(line.count("x)") == 2 for line in lines[2:])
