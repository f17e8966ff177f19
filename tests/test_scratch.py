"""The scratch directories of stages on a Dask worker (build/executors/scratch.py):
removed whatever a stage left in them, and those of killed workers swept."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pivotbuild.build.executors import scratch


def _read_only_tree(top: Path) -> None:
    """What a stage protecting its outputs leaves: read-only files in
    read-only directories, one of them not even listable."""
    (top / "out/sub").mkdir(parents=True)
    (top / "out/a.txt").write_text("a\n")
    (top / "out/sub/b.txt").write_text("b\n")
    (top / "locked").mkdir()
    (top / "locked/c.txt").write_text("c\n")
    for path in (top / "out/a.txt", top / "out/sub/b.txt", top / "locked/c.txt"):
        path.chmod(0o444)
    (top / "out/sub").chmod(0o555)
    (top / "out").chmod(0o555)
    (top / "locked").chmod(0o000)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory anyone may write in (pytest's are under a 0700 one)."""
    made = Path(tempfile.mkdtemp(prefix="pivot-scratch-test-"))
    made.chmod(0o777)
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def test_a_scratch_directory_is_removed_with_the_read_only_trees_in_it(
    open_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = open_tmp
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    # As root, permissions stop nothing: a child as nobody meets the tree as
    # a worker of an ordinary user would.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            place = scratch.make()
            if place.parent == tmp_path and place.name.startswith(f"pivot-stage-{os.getpid()}-"):
                _read_only_tree(place)
                scratch.remove(place)
                code = 0 if not place.exists() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not any(tmp_path.iterdir())


def test_the_sweep_removes_the_directories_of_dead_workers_of_this_place_only(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])  # (a pid that no longer runs)
    gone.wait()
    here = scratch._place()
    stale = tmp_path / f"pivot-stage-{gone.pid}-{here}-abc"
    stale.mkdir()
    _read_only_tree(stale)
    live = tmp_path / f"pivot-stage-{os.getpid()}-{here}-def"
    elsewhere = tmp_path / f"pivot-stage-{gone.pid}-0123abcd-ghi"  # (another machine's: its pids are not ours)
    other = tmp_path / "not-ours"
    for kept in (live, elsewhere, other):
        kept.mkdir()
    scratch.sweep(tmp_path)
    assert not stale.exists()
    assert live.exists() and elsewhere.exists() and other.exists()
