"""state/files.py: a replaced or removed state file's blocks are freed on
the "frees" thread, not by the build's own rename or unlink (ext4 with
`discard` waits for the disk as it frees them)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from conftest import Project
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
