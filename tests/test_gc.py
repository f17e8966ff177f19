"""`pivotbuild gc` (cache/gc.py), through the real command: it deletes only the
objects nothing records, wherever the record is (a lockfile, the journal of a
killed build, pending `--no-commit` results, an included pipeline), and
deletes nothing when a record cannot be read."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from conftest import Project
from helpers import StoredObject, background_build, cache_digests, hung_pid

from pivotbuild.state.hashing import hash_file


def objects(p: Project) -> set[str]:
    """The digests of the objects in the project's cache (files and packed)."""
    return cache_digests(p.root / ".pivot/cache")


# b hangs the first time only (its sleep's pid in b.pid, as hung_pid expects).
KILLED = """
stage a:
    deps: in.txt
    outs: a.txt
    run: cp in.txt $@
stage b:
    deps: a.txt
    outs: b.txt
    run:
        if [ ! -e hung.once ]; then
            touch hung.once
            sleep 30 &
            echo $! > b.pid
            wait
        fi
        cp $< $@
"""


def test_gc_keeps_what_the_journal_of_a_killed_build_records(project: Project, tmp_path: Path) -> None:
    project.pivotfile(KILLED)
    project.write("in.txt", "precious\n")
    with background_build(project, tmp_path, "-j1") as proc:
        pid = hung_pid(project)
        # a's outputs are copied into the cache in the background: wait for that.
        deadline = time.monotonic() + 10
        while hash_file(project.root / "a.txt") not in objects(project) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    assert (project.root / ".pivot/journal").exists()  # a's record lives only there
    assert not (project.root / "Pivotfile.lock").exists()
    r = project.run("gc")
    assert r.code == 0, r.err
    assert hash_file(project.root / "a.txt") in objects(project)
    (project.root / "a.txt").unlink()
    r = project.run("checkout", "a")
    assert r.code == 0, r.err
    assert (project.root / "a.txt").read_text() == "precious\n"


PENDING = """
X = 1
stage make:
    outs: out.txt
    run: echo ${X} > $@
"""


def test_gc_keeps_what_pending_no_commit_results_record(project: Project) -> None:
    project.pivotfile(PENDING)
    assert project.run().code == 0
    assert project.run("X=2").code == 0  # the lockfile now records X=2
    r = project.run("--no-commit", "--json")  # X=1 again: restored, pending
    assert r.code == 0, r.err
    assert (project.root / ".pivot/pending").exists()
    assert (project.root / "out.txt").read_text() == "1\n"
    digest = hash_file(project.root / "out.txt")
    assert project.run("gc").code == 0
    assert digest in objects(project)
    (project.root / "out.txt").unlink()
    r = project.run("checkout")
    assert r.code == 0, r.err
    assert (project.root / "out.txt").read_text() == "1\n"


def test_gc_keeps_the_objects_of_an_included_dot_pipeline(project: Project) -> None:
    project.pivotfile("include .tools\nstage top:\n    outs: top.txt\n    run: echo top > $@\n")
    project.pivotfile("stage tool:\n    outs: tool.txt\n    run: echo tool > $@\n", ".tools/Pivotfile")
    assert project.run().code == 0
    r = project.run("gc")
    assert r.code == 0, r.err
    assert "0 object(s)" in r.err
    (project.root / ".tools/tool.txt").unlink()
    r = project.run("checkout")
    assert r.code == 0, r.err
    assert (project.root / ".tools/tool.txt").read_text() == "tool\n"


TREE = """
stage tree:
    outs: tree/
    run: mkdir -p $@/sub && echo one > $@/one.txt && echo two > $@/sub/two.txt
"""


def test_gc_deletes_nothing_when_a_recorded_manifest_is_corrupt(project: Project) -> None:
    project.pivotfile(TREE)
    assert project.run().code == 0
    cache_dir = project.root / ".pivot/cache"
    before = objects(project)
    (manifest,) = (d for d in before if StoredObject(cache_dir, d).read_bytes().startswith(b"f "))
    StoredObject(cache_dir, manifest).write_bytes(b"rot\n")
    r = project.run("gc")
    assert r.code == 1, r.err
    assert "Traceback" not in r.err
    assert r.err.startswith("pivotbuild: ")
    assert "tree" in r.err and "corrupt" in r.err
    assert objects(project) >= before - {manifest}  # the files' objects survive
    # What the message says to do brings the manifest back; then gc goes on.
    shutil.rmtree(project.root / "tree")
    assert project.run().code == 0
    assert project.run("gc").code == 0
    assert objects(project) == before
    shutil.rmtree(project.root / "tree")
    assert project.run("checkout").code == 0
    assert (project.root / "tree/sub/two.txt").read_text() == "two\n"


def test_gc_stops_with_a_message_on_an_unreadable_lockfile(project: Project) -> None:
    project.pivotfile(TREE)
    assert project.run().code == 0
    before = objects(project)
    (project.root / "Pivotfile.lock").write_bytes(b"junk")
    r = project.run("gc")
    assert r.code == 1, r.err
    assert "internal error" not in r.err
    assert "Pivotfile.lock" in r.err and "before running gc" in r.err
    assert objects(project) == before
