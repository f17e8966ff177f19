"""stagework.prepare_outputs: what is left of a stage's outputs before it runs,
and the directories it writes them into; and the file a stage's command
empties as it starts (stagework.prepare's `emptied`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pivotbuild.build.executors.plaincommand import PlainCommands
from pivotbuild.build.executors.runner import RunSpec
from pivotbuild.build.executors.stagework import EMPTIED_MAX, _emptied, prepare_outputs
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


def test_the_small_file_the_command_empties_as_it_starts_is_left_to_it(tmp_path: Path) -> None:
    """A `> FILE` stage's small output is emptied by its own redirect as it
    starts, as under make or ninja: left in place (its inode kept), unless
    it is linked elsewhere (hardlink mode's object), a symlink, read-only,
    larger than EMPTIED_MAX, or not the file the command empties."""
    (tmp_path / "out").mkdir()
    kept, other = tmp_path / "out" / "a.txt", tmp_path / "out" / "b.txt"
    kept.write_text("old")
    other.write_text("old")
    inode = kept.stat().st_ino
    asked: list[int] = []

    def emptied() -> str:
        asked.append(1)
        return str(kept)

    assert prepare_outputs(tmp_path, stage(Out("out/a.txt"), Out("out/b.txt")), emptied=emptied) == ""
    assert kept.stat().st_ino == inode  # (its content is the command's to replace)
    assert not other.exists()
    assert asked == [1]  # (asked once a stage)

    linked = tmp_path / "out" / "linked.txt"
    linked.write_text("old")
    os.link(linked, tmp_path / "object")
    read_only = tmp_path / "out" / "read-only.txt"
    read_only.write_text("old")
    read_only.chmod(0o444)
    link = tmp_path / "out" / "link.txt"
    link.symlink_to(tmp_path / "object")
    large = tmp_path / "out" / "large.txt"
    large.write_bytes(b"x" * (EMPTIED_MAX + 1))
    for path in (linked, read_only, link, large):
        assert prepare_outputs(tmp_path, stage(Out(f"out/{path.name}")), emptied=lambda p=path: str(p)) == ""
        assert not os.path.lexists(path)
    assert (tmp_path / "object").read_text() == "old"


def test_a_stage_with_no_output_yet_never_asks_what_its_command_empties(tmp_path: Path) -> None:
    """A clean build's stages (no output there) do not read their scripts for it."""
    asked: list[int] = []
    assert prepare_outputs(tmp_path, stage(Out("out/a.txt")), emptied=lambda: asked.append(1) or None) == ""
    assert asked == [] and (tmp_path / "out").is_dir()


@pytest.mark.parametrize(
    ("script", "emptied"),
    [
        ("md5sum a b > out/x.txt", "out/x.txt"),
        ("cat a >out.txt", None),  # (`>` not standing alone: the shell's to read)
        ("cat a >> out.txt", None),  # (appended to: what it held stays)
        ("cat a > out.txt; cat b", None),
        ("cat a", None),
        ("cat 'a' > out.txt", None),
        ("echo a > out.txt", None),  # (a builtin: left to the shell, and removed first as before)
        ("cat a > ./out/../out.txt", "out.txt"),  # (named another way: the same file)
    ],
)
def test_only_a_plain_command_sending_its_output_to_a_file_empties_it_first(
    script: str, emptied: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = RunSpec(("/bin/sh", "-e", "-c", script), tmp_path, {"PATH": os.environ["PATH"]})
    assert _emptied(PlainCommands(), spec) == (None if emptied is None else str(tmp_path / emptied))
    elsewhere = RunSpec(spec.argv, tmp_path / "sub", spec.env)  # (a stage's workdir: not ours to check)
    assert _emptied(PlainCommands(), elsewhere) is None
