"""stagework.prepare_outputs: what is left of a stage's outputs before it runs,
and the directories it writes them into."""

from __future__ import annotations

import os
from pathlib import Path

from pivotbuild.build.executors.stagework import prepare_outputs
from pivotbuild.errors import Location
from pivotbuild.model import Out, Stage, StageId


def stage(*outs: Out) -> Stage:
    return Stage(id=StageId("", "s"), base="s", loc=Location("Pivotfile", 1, 1), command=("true",), outs=outs)


def test_a_stale_file_goes_and_its_directory_stays(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("old")
    assert prepare_outputs(tmp_path, stage(Out("out/a.txt"))) == ""
    assert not (tmp_path / "out" / "a.txt").exists()
    assert (tmp_path / "out").is_dir()


def test_a_stale_directory_goes_whole(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("old")
    assert prepare_outputs(tmp_path, stage(Out("d", is_dir=True))) == ""
    assert not (tmp_path / "d").exists()


def test_a_symlink_output_goes_and_what_it_points_to_stays(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("mine")
    (tmp_path / "link").symlink_to("target")
    (tmp_path / "dangling").symlink_to("nowhere")
    assert prepare_outputs(tmp_path, stage(Out("link"), Out("dangling"))) == ""
    assert not os.path.lexists(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "dangling")
    assert (tmp_path / "target" / "keep").read_text() == "mine"


def test_missing_directories_are_created(tmp_path: Path) -> None:
    assert prepare_outputs(tmp_path, stage(Out("a/b/c.txt"), Out("d/e", is_dir=True))) == ""
    assert (tmp_path / "a" / "b").is_dir()
    assert not (tmp_path / "a" / "b" / "c.txt").exists()
    assert (tmp_path / "d").is_dir()
    assert not (tmp_path / "d" / "e").exists()  # the stage makes its directory output itself


def test_persist_and_incremental_outputs_are_kept(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_text("line\n")
    (tmp_path / "acc").mkdir()
    (tmp_path / "acc" / "part").write_text("1")
    outs = (
        Out("log.txt", persist=True),
        Out("acc", is_dir=True, incremental=True),
        Out("new/deep", is_dir=True, persist=True),
        Out("fresh/log.txt", persist=True),
    )
    assert prepare_outputs(tmp_path, stage(*outs)) == ""
    assert (tmp_path / "log.txt").read_text() == "line\n"
    assert (tmp_path / "acc" / "part").read_text() == "1"
    assert (tmp_path / "new" / "deep").is_dir()  # a persistent directory output is created itself
    assert (tmp_path / "fresh").is_dir()
    assert not (tmp_path / "fresh" / "log.txt").exists()


def test_an_output_under_a_file_is_a_problem_naming_it(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a directory")
    problem = prepare_outputs(tmp_path, stage(Out("plain/x.txt")))
    assert problem == f"pivotbuild: cannot prepare output plain/x.txt: {os.strerror(17)}"
    deeper = prepare_outputs(tmp_path, stage(Out("plain/sub/x.txt")))
    assert deeper == f"pivotbuild: cannot prepare output plain/sub/x.txt: {os.strerror(20)}"
    assert (tmp_path / "plain").read_text() == "a file, not a directory"
