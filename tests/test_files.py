"""state/files.py: a replaced or removed state file's blocks are freed on
the "frees" thread, not by the build's own rename or unlink (ext4 with
`discard` waits for the disk as it frees them)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Project
from helpers import build
from test_journal import record

import pivotbuild
from pivotbuild.state import files, journal, lockfile
from pivotbuild.state.files import Frees, remove, unlink, write_atomic


class Handed:
    """The descriptors handed to `files.FREES`, each with the inode it held,
    closed at once as the thread would."""

    def __init__(self) -> None:
        self.inodes: list[int] = []

    def close(self, fd: int) -> None:
        if fd >= 0:
            self.inodes.append(os.fstat(fd).st_ino)
            os.close(fd)


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> Handed:
    spy = Handed()
    monkeypatch.setattr(files, "FREES", spy)
    return spy


def test_a_replaced_file_is_held_until_the_frees_thread_lets_it_go(tmp_path: Path, handed: Handed) -> None:
    path = tmp_path / "Pivotfile.lock"
    path.write_bytes(b"old" * 10_000)
    old = path.stat().st_ino
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert handed.inodes == [old]
    assert path.stat().st_ino != old


def test_a_file_with_no_blocks_is_replaced_without_being_held(tmp_path: Path, handed: Handed) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    write_atomic(path, b"new")
    write_atomic(tmp_path / "absent", b"new")
    assert path.read_bytes() == (tmp_path / "absent").read_bytes() == b"new"
    assert handed.inodes == []


def test_remove_holds_the_file_and_takes_its_name(tmp_path: Path, handed: Handed) -> None:
    path = tmp_path / "journal"
    path.write_bytes(b"x" * 100_000)
    old = path.stat().st_ino
    remove(path)
    remove(path)  # (gone already: nothing to do)
    assert not path.exists()
    assert handed.inodes == [old]


def test_remove_leaves_a_symlinks_target_alone(tmp_path: Path, handed: Handed) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"kept" * 1000)
    link = tmp_path / "link"
    link.symlink_to(target)
    remove(link)
    assert not link.is_symlink()
    assert target.read_bytes() == b"kept" * 1000
    assert handed.inodes == []


def test_folding_a_journal_removes_it_through_the_frees_thread(tmp_path: Path, handed: Handed) -> None:
    path = tmp_path / "journal"
    j = journal.Journal(path)
    j.append(record("a"))
    j.close()
    old = path.stat().st_ino
    records, damaged = journal.fold(path, tmp_path / "Pivotfile.lock", lockfile.Records())
    assert not damaged and "a" in records
    assert not path.exists()
    assert old in handed.inodes


def test_the_thread_closes_what_it_is_handed() -> None:
    frees = Frees()
    pipes = [os.pipe() for _ in range(3)]
    for _, write_end in pipes:
        frees.close(write_end)
    frees.close(-1)  # (nothing held: ignored)
    for read_end, _ in pipes:
        os.set_blocking(read_end, True)
        assert os.read(read_end, 1) == b""  # (EOF: every write end closed, by the thread)
        os.close(read_end)
    assert Frees.THREAD in [t.name for t in threading.enumerate()]


def test_unlink_holds_only_a_files_last_name(tmp_path: Path, handed: Handed) -> None:
    path, other = tmp_path / "out", tmp_path / "object"
    path.write_bytes(b"x" * 100_000)
    os.link(path, other)
    ino = path.stat().st_ino
    unlink(path, os.lstat(path))  # (the object keeps the blocks: nothing to free)
    assert handed.inodes == []
    unlink(other, os.lstat(other))
    assert handed.inodes == [ino]
    assert not path.exists() and not other.exists()


def test_a_rerun_stage_s_old_output_is_freed_by_the_frees_thread(project: Project, handed: Handed) -> None:
    project.pivotfile(
        """
        stage big:
            deps: in.txt
            outs: big.bin
            run: cat $< $< $< $< > $@; head -c 200000 /dev/zero >> $@
        """
    )
    project.write("in.txt", "one\n")
    built = pivotbuild.Project.load(project.root)
    assert built.build().ran == ("big",)
    old = (project.root / "big.bin").stat().st_ino
    project.write("in.txt", "two\n")
    assert built.build().ran == ("big",)
    assert (project.root / "big.bin").read_bytes().startswith(b"two\n" * 4)
    assert old in handed.inodes  # (its only name gone as the stage reran; its blocks freed on the thread)


def _until(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 20
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_rerun_stage_s_old_directory_is_moved_aside_and_removed_on_the_thread(project: Project) -> None:
    project.pivotfile(
        """
        stage parts:
            deps: in.txt
            outs: parts/
            run: mkdir -p parts && for i in 1 2 3; do cat in.txt > parts/$i.txt; done
        """
    )
    project.write("in.txt", "one\n")
    (project.root / ".pivot" / "trash" / "99-left-by-a-killed-build" / "x").mkdir(parents=True)
    built = pivotbuild.Project.load(project.root)
    assert built.build().ran == ("parts",)
    project.write("in.txt", "two\n")
    (project.root / "parts" / "stale.txt").write_text("an old file the rerun must not keep\n")
    assert built.build().ran == ("parts",)
    assert sorted(p.name for p in (project.root / "parts").iterdir()) == ["1.txt", "2.txt", "3.txt"]
    assert (project.root / "parts" / "1.txt").read_text() == "two\n"
    trash = project.root / ".pivot" / "trash"
    assert _until(lambda: not any(trash.iterdir()))  # (this build's old tree and the killed build's, gone)


def test_a_directory_that_cannot_be_moved_aside_is_removed_in_place(tmp_path: Path) -> None:
    tree = tmp_path / "out"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    files.remove_tree_later(str(tree), tmp_path / "no-such-state-dir" / "trash")
    assert not tree.exists()
    assert not (tmp_path / "no-such-state-dir").exists()


def test_pivotbuild_leaves_no_old_directory_behind_when_it_exits(project: Project) -> None:
    project.pivotfile(
        """
        stage parts:
            deps: in.txt
            outs: parts/
            run: mkdir -p parts && cd parts && seq 1 300 | xargs touch && echo "$(cat ../in.txt)" > first
        """
    )
    project.write("in.txt", "one\n")
    assert build(project)["parts"][0] == "ran"
    project.write("in.txt", "two\n")
    assert build(project)["parts"][0] == "ran"  # (the real program, in its own process: it left through os._exit)
    assert (project.root / "parts" / "first").read_text() == "two\n"
    assert len(list((project.root / "parts").iterdir())) == 301
    assert list((project.root / ".pivot" / "trash").iterdir()) == []  # (the old tree, moved aside, removed)


def test_drain_waits_for_the_directories_handed_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = files.remove_tree

    def slowly(path: str, *, ignore_errors: bool = False) -> None:
        time.sleep(0.3)
        real(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(files, "remove_tree", slowly)
    frees = Frees()
    trees = [tmp_path / "a", tmp_path / "b"]
    for tree in trees:
        (tree / "sub").mkdir(parents=True)
        frees.remove_tree(str(tree))
    frees.drain()
    assert not any(tree.exists() for tree in trees)


def test_the_program_waits_for_the_frees_thread_before_it_leaves(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import sys

    from pivotbuild import cli

    project.pivotfile("stage a:\n    outs: a.txt\n    run: echo a > $@\n")
    calls: list[object] = []

    def leave(code: int) -> None:
        calls.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(files.FREES, "drain", lambda: calls.append("drain"))
    monkeypatch.setattr(os, "_exit", leave)
    monkeypatch.setattr(sys, "argv", ["pivotbuild", "-s", "-C", str(project.root)])
    try:
        with pytest.raises(SystemExit):
            cli.run()
    finally:
        gc.enable()  # (run turns it off for the process's short rest)
    assert calls == ["drain", 0]


def test_what_a_killed_build_left_in_the_trash_goes_with_the_next_build(project: Project) -> None:
    project.pivotfile("stage a:\n    deps: in.txt\n    outs: a.txt\n    run: cp in.txt a.txt\n")
    project.write("in.txt", "one\n")
    left = project.root / ".pivot" / "trash" / "4242-0123456789ab"
    (left / "deep" / "er").mkdir(parents=True)
    (left / "deep" / "er" / "f").write_text("x" * 100_000)
    assert build(project)["a"][0] == "ran"  # (a build that moves no directory aside)
    assert list((project.root / ".pivot" / "trash").iterdir()) == []
