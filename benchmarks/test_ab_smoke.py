"""ab.py, run small: two versions (here both this checkout, named as a
directory) built clean and incrementally in interleaved rounds; it prints a
row per version and kind (no timings are asserted)."""

from __future__ import annotations

from pathlib import Path

import ab
import pytest


def test_it_times_two_versions_in_interleaved_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    here = str(Path(ab.__file__).resolve().parent.parent)
    argv = ["--base", here, "--new", here, "--width", "3", "--depth", "4", "--rounds", "2", "--dir", str(tmp_path)]
    assert ab.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("12 stages (small, copy), -j2, 2 interleaved rounds")
    assert [line.split()[0] for line in lines[2:]] == ["clean", "base", "new", "incr", "base", "new"]
    assert "new/base" in lines[4] and "new/base" in lines[7]
    # An edit a round, built by the version (two may land on one source: the
    # rounds number the edits across both versions, in a random order).
    edits = [line for p in (tmp_path / "incr-new" / "src").iterdir() for line in p.read_text().splitlines()]
    assert len([line for line in edits if line.startswith("edit ")]) == 2
    assert (tmp_path / "incr-new" / "out" / "3_0.txt").exists()


def test_fresh_rounds_build_a_new_project_then_time_its_incremental_builds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = str(Path(ab.__file__).resolve().parent.parent)
    argv = ["--base", here, "--new", here, "--width", "3", "--depth", "4", "--rounds", "2", "--what", "fresh"]
    assert ab.main([*argv, "--edits", "2", "--settle", "0.01", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["fresh", "base", "new"]
    assert "new/base" in lines[4]
    assert not (tmp_path / "fresh").exists()  # (each round's project, removed after)


def test_a_revision_is_timed_with_its_c_extension_built(tmp_path: Path) -> None:
    """A revision checked out for the run gets its _clonespawn compiled, as
    an install compiles it (where this one was): without it, that side would
    start its stages by posix_spawn, and be timed so."""
    from pivotbuild.build.executors import spawn

    with ab.tree("HEAD", tmp_path) as code:
        built = list((code / "pivotbuild/build/executors").glob("_clonespawn.*.so"))
        assert len(built) == (spawn._clonespawn is not None)
    assert not code.exists()  # (the worktree, removed after)


def test_served_rounds_go_through_a_server_of_each_versions_own_stopped_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = str(Path(ab.__file__).resolve().parent.parent)
    argv = ["--base", here, "--new", here, "--width", "3", "--depth", "4", "--rounds", "2", "--what", "incr"]
    assert ab.main([*argv, "--served", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "through build servers" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["incr", "base", "new"]
    edits = [line for p in (tmp_path / "incr-new" / "src").iterdir() for line in p.read_text().splitlines()]
    assert len([line for line in edits if line.startswith("edit ")]) == 2 + 2  # (two warm, untimed)
    assert not [p for p in Path("/tmp").glob("pvab-*") if p.is_dir() and list(p.glob("*.sock"))]


def test_sequence_rounds_build_two_fresh_projects_in_turn_and_time_the_second(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = str(Path(ab.__file__).resolve().parent.parent)
    argv = ["--base", here, "--new", here, "--width", "3", "--depth", "4", "--rounds", "1", "--what", "sequence"]
    assert ab.main([*argv, "--mode", "hardlink", "--edits", "2", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("12 stages (small, hardlink), -j2, 1 interleaved rounds")
    assert [line.split()[0] for line in lines[2:]] == ["sequence", "base", "new", "memory", "base", "new"]
    assert "new/base" in lines[4]
    assert not list(tmp_path.glob("sequence-*"))  # (each round's projects, removed after)
