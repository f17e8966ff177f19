"""The no-op fast path and the up-to-date seal, end to end: the real `pivotbuild`
in temporary projects.  Which path answered is seen without timing: the build
runs under `python -X importtime`, and the fast path imports none of lark,
networkx, click or rich.  Which stages ran is seen in the log they append to."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PIVOTBUILD, Project
from helpers import CHAIN, DURATION, background_build, counts, history, read, runs, wait_until
from tracing import Traced, assert_fast, build, traced

# -- helpers -----------------------------------------------------------------------------


def assert_ordinary(r: Traced) -> None:
    """The engine decided (the no-op fast path did not answer)."""
    assert "Traceback" not in r.err, r.err
    assert r.decided, f"the no-op fast path answered: {r}"


def rewrite_in_place(path: Path, text: str, *, keep_mtime: bool) -> None:
    """New content in the same inode (as an editor saving in place does); with
    `keep_mtime`, the old mtime is put back, as if written in the same clock tick."""
    before = path.stat()
    with path.open("r+") as f:
        f.write(text)
        f.truncate()
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- 1. the no-op --------------------------------------------------------------------------


def test_second_build_is_a_fast_noop_that_prints_what_the_ordinary_path_prints(chain: Project) -> None:
    first = build(chain)
    assert counts(first.err) == (3, 0, 0, 0)
    assert sorted(runs(chain)) == ["a", "b", "c"]

    fast = traced(chain)
    assert_fast(fast)
    assert counts(fast.err) == (0, 3, 0, 0)
    assert fast.out == ""
    assert sorted(runs(chain)) == ["a", "b", "c"]

    (chain.root / ".pivot" / "seal").unlink()  # the ordinary path must decide
    ordinary = traced(chain)
    assert ordinary.code == 0, ordinary
    assert_ordinary(ordinary)
    assert sorted(runs(chain)) == ["a", "b", "c"]
    assert fast.out == ordinary.out
    assert DURATION.sub(" in Ns", fast.err) == DURATION.sub(" in Ns", ordinary.err)
    assert (chain.root / ".pivot" / "seal").exists()  # and seals again

    again = traced(chain)
    assert_fast(again)
    assert again.err.splitlines()[0].startswith("pivotbuild: 0 ran, 3 up to date, 0 restored, 0 failed in ")


def test_fast_noop_appends_the_history_entry_the_ordinary_path_appends(chain: Project) -> None:
    build(chain)
    (chain.root / ".pivot" / "seal").unlink()
    assert_ordinary(build(chain))
    assert_fast(build(chain))
    assert_fast(build(chain, "a"))

    entries = history(chain)
    assert len(entries) == 4
    first, ordinary, fast, targeted = entries
    assert (first["ran"], first["skipped"]) == (3, 0)

    def same(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in ("started", "duration_s")}

    assert same(fast) == same(ordinary)
    assert same(ordinary) == {"targets": [], "result": "ok", "ran": 0, "skipped": 3, "failed": 0, "stages": {}}
    assert set(fast) == set(ordinary)
    assert same(targeted) == {**same(ordinary), "targets": ["a"], "skipped": 1}

    text = chain.run("history")
    assert text.code == 0, text
    lines = text.out.splitlines()
    assert len(lines) == 4
    assert "0 ran, 3 up to date, 0 failed" in lines[2]


def test_the_installed_command_imports_nothing_heavy_on_a_noop(chain: Project) -> None:
    """The `pivotbuild` script itself, not `python -m pivotbuild`: a
    console-script entry point's wrapper would import `re` first (bin/pivotbuild)."""
    build(chain)
    assert len(PIVOTBUILD) == 1 and Path(PIVOTBUILD[0]).name == "pivotbuild", PIVOTBUILD
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    r = subprocess.run(PIVOTBUILD, cwd=chain.root, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines[1:]}
    assert "pivotbuild" in imported  # (the trace is there)
    assert not imported & {"re", "lark", "click", "typing", "pathlib", "json"}, sorted(imported)


def test_question_mode_is_silent_on_a_noop_and_fails_after_a_dep_edit(chain: Project) -> None:
    build(chain)
    r = traced(chain, "-q")
    assert_fast(r)
    assert (r.out, r.err) == ("", "")
    r = chain.run("-q")  # the console script, as a user types it
    assert (r.code, r.out, r.err) == (0, "", "")
    assert len(history(chain)) == 1  # -q is no build

    chain.write("in.txt", "changed\n")
    r = traced(chain, "-q")
    assert r.code == 1, r
    assert_ordinary(r)
    assert sorted(runs(chain)) == ["a", "b", "c"]  # -q runs nothing
    assert read(chain, "b.txt") == "HELLO\n"

    build(chain)
    assert read(chain, "b.txt") == "CHANGED\n"
    r = traced(chain, "-q")
    assert_fast(r)
    assert (r.out, r.err) == ("", "")


def test_silent_flag_and_harmless_flags_still_take_the_fast_path(chain: Project) -> None:
    build(chain)
    for args in (("-s",), ("-j2",), ("-j", "2"), ("--jobs=2",), ("-k",), ("--no-wait",)):
        r = traced(chain, *args)
        assert_fast(r)
        assert counts(r.err) == (0, 3, 0, 0), (args, r)  # -s keeps the summary, as the ordinary path does
    assert sorted(runs(chain)) == ["a", "b", "c"]


# -- 3. the seal never hides a change ------------------------------------------------------


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "same-mtime"])
def test_same_size_rewrite_right_after_a_build_is_never_missed(chain: Project, keep_mtime: bool) -> None:
    dep = chain.root / "in.txt"
    for i in range(10):
        build(chain)
        text = f"run{i:02d}\n"  # the size of "hello\n", new content every time
        assert dep.stat().st_size == len(text)
        before = runs(chain).count("a")
        rewrite_in_place(dep, text, keep_mtime=keep_mtime)
        r = traced(chain)
        assert r.code == 0, r
        assert runs(chain).count("a") == before + 1, (i, r)
        assert read(chain, "build/a.txt") == text, i
        assert read(chain, "b.txt") == text.upper(), i
        assert counts(r.err)[0] == 2, (i, r.err)
    assert runs(chain).count("c") == 1


def test_same_size_rewrite_of_an_output_right_after_a_build_is_restored(chain: Project) -> None:
    for i in range(5):
        build(chain)
        rewrite_in_place(chain.root / "b.txt", f"HELL{i}\n", keep_mtime=True)
        r = traced(chain)
        assert r.code == 0, r
        assert_ordinary(r)
        assert read(chain, "b.txt") == "HELLO\n", i
        assert counts(r.err)[1] < 3, r.err


def test_touching_a_dep_reruns_nothing(chain: Project) -> None:
    build(chain)
    assert_fast(traced(chain))
    for rel in ("in.txt", "other.txt", "build/a.txt"):
        os.utime(chain.root / rel)  # `touch`: a new mtime and ctime, the same content
    r = traced(chain)
    assert r.code == 0, r
    assert counts(r.err) == (0, 3, 0, 0)
    assert sorted(runs(chain)) == ["a", "b", "c"]
    r = traced(chain)
    assert_fast(r)
    assert counts(r.err) == (0, 3, 0, 0)


GLOB = """
stage g:
    deps: src/*.csv
    outs: all.txt
    run: cat src/*.csv > $@; echo g >> runs.log

stage other:
    deps: other.txt
    outs: other.out
    run: cp $< $@; echo other >> runs.log
"""


def sealed_noop(p: Project, *args: str) -> Traced:
    """A no-op build after which the next one must be answered by the fast path:
    one more ordinary no-op first if a directory was too new to seal."""
    r = build(p, *args)
    assert counts(r.err)[0] == 0, r.err
    r = traced(p, *args)
    if not r.fast:
        r = traced(p, *args)
    assert_fast(r)
    return r


def test_a_matching_file_added_under_a_glob_reruns_and_a_non_matching_one_does_not(project: Project) -> None:
    project.pivotfile(GLOB)
    project.write("src/a.csv", "a\n")
    project.write("other.txt", "o\n")
    build(project)
    sealed_noop(project)

    project.write("src/notes.txt", "not matched\n")
    r = build(project)
    assert counts(r.err) == (0, 2, 0, 0)
    assert runs(project) == ["g", "other"] or runs(project) == ["other", "g"]
    sealed_noop(project)

    project.write("src/b.csv", "b\n")
    r = build(project)
    assert counts(r.err) == (1, 1, 0, 0)
    assert runs(project).count("g") == 2
    assert read(project, "all.txt") == "a\nb\n"

    sealed_noop(project)
    project.write("src/sub/c.csv", "c\n")  # a subdirectory: not matched by src/*.csv
    r = build(project)
    assert counts(r.err) == (0, 2, 0, 0)
    assert runs(project).count("g") == 2

    sealed_noop(project)
    (project.root / "src/a.csv").unlink()
    r = build(project)
    assert counts(r.err) == (1, 1, 0, 0)
    assert read(project, "all.txt") == "b\n"
    assert runs(project).count("other") == 1


DEEP = """
stage deep:
    deps: src/**/*.csv
    outs: deep.txt
    run: find src -name '*.csv' | sort > $@; echo deep >> runs.log
"""


def test_a_file_added_deep_under_a_double_star_glob_reruns(project: Project) -> None:
    project.pivotfile(DEEP)
    project.write("src/a/b/one.csv", "1\n")
    build(project)
    sealed_noop(project)

    project.write("src/a/b/c/two.csv", "2\n")  # a new directory, deep down
    r = build(project)
    assert counts(r.err) == (1, 0, 0, 0)
    assert read(project, "deep.txt") == "src/a/b/c/two.csv\nsrc/a/b/one.csv\n"

    sealed_noop(project)
    project.write("src/a/b/c/three.csv", "3\n")  # in a directory the glob listed last time
    r = build(project)
    assert counts(r.err) == (1, 0, 0, 0)
    assert read(project, "deep.txt") == "src/a/b/c/three.csv\nsrc/a/b/c/two.csv\nsrc/a/b/one.csv\n"

    sealed_noop(project)
    project.write("src/a/b/c/notes.txt", "no\n")
    r = build(project)
    assert counts(r.err) == (0, 1, 0, 0)
    assert runs(project) == ["deep"] * 3


DIRDEP = """
stage listing:
    deps: data/
    outs: listing.txt
    run: find data -type f | sort > $@; echo listing >> runs.log
"""


def test_a_file_added_inside_a_directory_dep_reruns(project: Project) -> None:
    project.pivotfile(DIRDEP)
    project.write("data/x.txt", "x\n")
    project.write("data/deep/y.txt", "y\n")
    build(project)
    sealed_noop(project)

    project.write("data/z.txt", "z\n")
    r = build(project)
    assert counts(r.err) == (1, 0, 0, 0)
    assert read(project, "listing.txt") == "data/deep/y.txt\ndata/x.txt\ndata/z.txt\n"

    sealed_noop(project)
    project.write("data/deep/w.txt", "w\n")  # deeper down: only that directory's stamp changes
    r = build(project)
    assert counts(r.err) == (1, 0, 0, 0)
    assert read(project, "listing.txt") == "data/deep/w.txt\ndata/deep/y.txt\ndata/x.txt\ndata/z.txt\n"

    sealed_noop(project)
    rewrite_in_place(project.root / "data/deep/y.txt", "Y\n", keep_mtime=True)  # content only
    r = build(project)
    assert counts(r.err) == (1, 0, 0, 0)
    assert runs(project) == ["listing"] * 4


@pytest.mark.parametrize("rel", ["b.txt", "build/a.txt"])
def test_a_deleted_output_is_restored_not_reported_up_to_date(chain: Project, rel: str) -> None:
    build(chain)
    assert_fast(traced(chain))
    (chain.root / rel).unlink()
    r = traced(chain)
    assert r.code == 0, r
    assert_ordinary(r)
    ran, up, restored, _ = counts(r.err)
    assert ran + restored >= 1, r.err
    assert up <= 2, r.err
    assert read(chain, "build/a.txt") == "hello\n"
    assert read(chain, "b.txt") == "HELLO\n"
    assert_fast(traced(chain))


def test_a_deleted_output_directory_is_restored(project: Project) -> None:
    project.pivotfile(
        """
        stage gen:
            deps: in.txt
            outs: out/
            run: mkdir -p out/deep; cp in.txt out/one.txt; echo two > out/deep/two.txt; echo gen >> runs.log
        """
    )
    project.write("in.txt", "one\n")
    build(project)
    sealed_noop(project)
    (project.root / "out/deep/two.txt").unlink()
    r = build(project)
    assert counts(r.err)[1] == 0, r.err
    assert read(project, "out/deep/two.txt") == "two\n"

    sealed_noop(project)
    project.write("out/deep/stray.txt", "left by hand\n")
    r = build(project)
    assert counts(r.err)[1] == 0, r.err
    assert sorted(p.name for p in (project.root / "out/deep").iterdir()) == ["two.txt"]

    sealed_noop(project)
    rewrite_in_place(project.root / "out/one.txt", "ONE\n", keep_mtime=True)
    r = build(project)
    assert counts(r.err)[1] == 0, r.err
    assert read(project, "out/one.txt") == "one\n"
    assert runs(project) == ["gen"]  # the cache had it every time


def test_an_older_lockfile_is_followed_not_the_seal(chain: Project, tmp_path: Path) -> None:
    build(chain)
    old_lock = tmp_path / "Pivotfile.lock.v1"
    shutil.copy2(chain.root / "Pivotfile.lock", old_lock)

    chain.write("in.txt", "second\n")
    build(chain)
    assert read(chain, "b.txt") == "SECOND\n"
    assert_fast(traced(chain))
    assert runs(chain).count("a") == 2

    # `git checkout` of the lockfile alone: it now says a was built from "hello".
    shutil.copy(old_lock, chain.root / "Pivotfile.lock")
    r = traced(chain, "-q")
    assert r.code == 1, r
    r = traced(chain)
    assert r.code == 0, r
    assert_ordinary(r)
    ran, up, restored, _ = counts(r.err)
    assert ran + restored >= 2, r.err  # a and b are out of date by that lockfile
    assert up == 1, r.err  # c is not
    assert read(chain, "b.txt") == "SECOND\n"
    assert (chain.root / "Pivotfile.lock").read_bytes() != old_lock.read_bytes()
    assert_fast(traced(chain))


def test_an_older_lockfile_with_its_sources_restores_the_old_outputs(chain: Project, tmp_path: Path) -> None:
    build(chain)
    shutil.copy2(chain.root / "Pivotfile.lock", tmp_path / "lock.v1")
    shutil.copy2(chain.root / "in.txt", tmp_path / "in.v1")
    chain.write("in.txt", "second\n")
    build(chain)
    assert_fast(traced(chain))

    # `git checkout HEAD~ -- Pivotfile.lock in.txt`
    shutil.copy(tmp_path / "lock.v1", chain.root / "Pivotfile.lock")
    shutil.copy(tmp_path / "in.v1", chain.root / "in.txt")
    r = traced(chain)
    assert r.code == 0, r
    assert read(chain, "build/a.txt") == "hello\n"
    assert read(chain, "b.txt") == "HELLO\n"
    assert counts(r.err)[1] == 1, r.err
    assert (chain.root / "Pivotfile.lock").read_bytes() == (tmp_path / "lock.v1").read_bytes()


def test_a_deleted_lockfile_is_followed_not_the_seal(chain: Project) -> None:
    build(chain)
    assert_fast(traced(chain))
    (chain.root / "Pivotfile.lock").unlink()
    r = traced(chain)
    assert r.code == 0, r
    assert_ordinary(r)
    ran, up, restored, _ = counts(r.err)
    assert up < 3, r.err
    assert ran + restored >= 1, r.err
    assert (chain.root / "Pivotfile.lock").exists()
    assert read(chain, "b.txt") == "HELLO\n"
    r = traced(chain, "-q")
    assert r.code == 0, r


def test_a_deleted_source_is_an_error_not_a_noop(chain: Project) -> None:
    build(chain)
    assert_fast(traced(chain))
    (chain.root / "other.txt").unlink()
    r = traced(chain)
    assert r.code != 0, r
    assert "other.txt" in r.err, r.err
    assert "Traceback" not in r.err
    r = traced(chain, "b")  # a target that does not need it
    assert r.code == 0, r
    assert counts(r.err) == (0, 2, 0, 0)


def test_a_copied_project_does_not_use_the_originals_files_for_its_seal(tmp_path: Path) -> None:
    """`cp -a` of a built project to another place with the same directory name:
    the copy's own files decide, not the original's."""
    original = Project(tmp_path / "first" / "proj")
    (original.root / ".pivot").mkdir(parents=True)
    original.pivotfile(CHAIN)
    original.write("in.txt", "hello\n")
    original.write("other.txt", "other\n")
    build(original)
    assert_fast(traced(original))

    copy = Project(tmp_path / "second" / "proj")
    copy.root.parent.mkdir()
    subprocess.run(["cp", "-a", str(original.root), str(copy.root)], check=True)
    copy.write("in.txt", "copied\n")
    r = traced(copy)
    assert r.code == 0, r
    assert counts(r.err)[0] == 2, r.err
    assert read(copy, "b.txt") == "COPIED\n"
    assert read(original, "b.txt") == "HELLO\n"
    r = traced(copy, "-q")
    assert r.code == 0, r

    copy.write("other.txt", "copied too\n")
    r = traced(copy)
    assert r.code == 0, r
    assert read(copy, "c.txt") == "copied too\n"
    assert_fast(traced(original))
    assert sorted(runs(original)) == ["a", "b", "c"]


ALWAYS = """
stage stamp:
    always: yes
    deps: in.txt
    outs: stamp.txt
    run: cp $< $@; echo stamp >> runs.log

stage plain:
    deps: in.txt
    outs: plain.txt
    run: cp $< $@; echo plain >> runs.log
"""


def test_an_always_stage_runs_on_every_build(project: Project) -> None:
    project.pivotfile(ALWAYS)
    project.write("in.txt", "x\n")
    for n in range(1, 5):
        r = build(project)
        assert runs(project).count("stamp") == n, r
        assert runs(project).count("plain") == 1, r
        assert counts(r.err) == ((2, 0, 0, 0) if n == 1 else (1, 1, 0, 0)), r.err
    r = traced(project, "plain")  # a target that does not need it can be a fast no-op
    assert_fast(r)
    assert counts(r.err) == (0, 1, 0, 0)
    r = build(project, "stamp")
    assert runs(project).count("stamp") == 5


# `b` hangs (its sleep's pid in b.pid) unless hung.once exists, so a build can be
# killed while it runs, leaving the journal of what finished before.
HANGS = """
stage a:
    deps: in.txt
    outs: a.txt
    run: cp $< $@; echo a >> runs.log

stage b:
    deps: a.txt
    outs: b.txt
    run:
        echo b >> runs.log
        if [ ! -e hung.once ]; then
            touch hung.once
            sleep 30 &
            echo $! > b.pid
            wait
        fi
        cp $< $@
"""


def kill_mid_build(p: Project, tmp: Path) -> bytes:
    """Run the build, SIGKILL pivotbuild while b hangs; the journal it left."""
    (p.root / "hung.once").unlink(missing_ok=True)
    (p.root / "b.pid").unlink(missing_ok=True)
    with background_build(p, tmp, "-j1") as proc:
        pid_file = p.root / "b.pid"
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 20, "stage b to start")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    journal = p.root / ".pivot" / "journal"
    assert journal.exists(), "a killed build leaves its journal"
    return journal.read_bytes()


def test_a_leftover_journal_is_folded_not_skipped_by_the_fast_path(project: Project, tmp_path: Path) -> None:
    project.pivotfile(HANGS)
    project.write("in.txt", "one\n")
    leftover = kill_mid_build(project, tmp_path)  # a finished (journaled), b was killed
    assert runs(project) == ["a", "b"]

    r = build(project)  # folds the journal: a is not run again
    assert runs(project) == ["a", "b", "b"]
    assert read(project, "b.txt") == "one\n"
    assert_fast(traced(project))

    (project.root / ".pivot" / "journal").write_bytes(leftover)  # the same records again
    r = traced(project)
    assert r.code == 0, r
    assert_ordinary(r)
    assert "warning" not in r.err, r.err
    assert counts(r.err) == (0, 2, 0, 0)
    assert not (project.root / ".pivot" / "journal").exists()
    assert runs(project) == ["a", "b", "b"]
    assert_fast(traced(project))


def test_a_leftover_journal_newer_than_the_lockfile_decides(project: Project, tmp_path: Path) -> None:
    project.pivotfile(HANGS)
    project.write("in.txt", "one\n")
    project.write("hung.once", "")
    build(project)
    project.write("in.txt", "two\n")
    leftover = kill_mid_build(project, tmp_path)  # journal: a built from "two"; lockfile: from "one"
    project.write("in.txt", "one\n")
    build(project)  # the journal folded, a rebuilt from "one"
    assert read(project, "a.txt") == read(project, "b.txt") == "one\n"
    assert_fast(traced(project))
    a_runs = runs(project).count("a")

    # That journal again: folded, its record of a ("two") is newer than the lockfile's,
    # and a.txt holds "one": a is not up to date, whatever the seal says.
    (project.root / ".pivot" / "journal").write_bytes(leftover)
    r = traced(project)
    assert r.code == 0, r
    assert_ordinary(r)
    ran, up, restored, _ = counts(r.err)
    assert ran + restored >= 1, r.err
    assert up <= 1, r.err
    assert runs(project).count("a") + restored >= a_runs + 1
    assert read(project, "a.txt") == read(project, "b.txt") == "one\n"
    assert not (project.root / ".pivot" / "journal").exists()
    assert_fast(traced(project))


def test_no_commit_results_are_not_a_fast_noop_until_committed(chain: Project) -> None:
    build(chain)
    chain.write("in.txt", "pending\n")
    r = traced(chain, "--no-commit")
    assert r.code == 0, r
    assert read(chain, "b.txt") == "PENDING\n"
    assert runs(chain).count("a") == 2

    for _ in range(2):
        r = traced(chain)
        assert r.code == 0, r
        assert_ordinary(r)
        assert runs(chain).count("a") == 2  # pending results count: nothing runs
        assert read(chain, "b.txt") == "PENDING\n"

    c = chain.run("commit")
    assert c.code == 0, c
    assert "committed a" in c.out
    r = traced(chain)
    if not r.fast:  # the build after commit may seal what commit promoted
        r = traced(chain)
    assert_fast(r)
    assert counts(r.err) == (0, 3, 0, 0)
    assert runs(chain).count("a") == 2


SHARED = """
stage one:
    deps: in.txt
    outs: one.txt
    run: cp $< $@; echo one >> runs.log

stage two:
    deps: in.txt
    outs: two.txt
    run: cp $< $@; echo two >> runs.log
"""


def test_a_stage_left_out_of_a_targeted_build_is_not_sealed_with_its_neighbours_new_stamps(project: Project) -> None:
    project.pivotfile(SHARED)
    project.write("in.txt", "first\n")
    build(project)
    assert_fast(traced(project))

    project.write("in.txt", "second, longer\n")
    r = build(project, "one")  # two also reads in.txt, but is not built now
    assert counts(r.err) == (1, 0, 0, 0)
    assert read(project, "two.txt") == "first\n"

    r = traced(project, "two", "-q")
    assert r.code == 1, "two is out of date"
    r = build(project)
    assert counts(r.err) == (1, 1, 0, 0), r.err
    assert read(project, "two.txt") == "second, longer\n"
    assert sorted(runs(project)) == ["one", "one", "two", "two"]


# -- 4. targets and options ----------------------------------------------------------------

MATRIX = """
MODELS = small large

stage prep:
    deps: in.txt
    outs: prep.txt
    run: cp $< $@; echo prep >> runs.log

stage train:
    matrix: model=${MODELS}
    deps: prep.txt
    outs: models/${model}.txt
    run: echo ${model} > $@; cat $< >> $@; echo train@${model} >> runs.log

stage solo:
    deps: other.txt
    outs: solo.txt
    run: cp $< $@; echo solo >> runs.log
"""


@pytest.fixture
def matrix(project: Project) -> Project:
    project.pivotfile(MATRIX)
    project.write("in.txt", "data\n")
    project.write("other.txt", "other\n")
    return project


@pytest.mark.parametrize(
    ("targets", "stages"),
    [
        (("train",), 3),
        (("train@small",), 2),
        (("prep",), 1),
        (("solo", "train@large"), 3),
        (("train@large", "train@small"), 3),
    ],
)
def test_a_stage_or_matrix_base_target_is_a_fast_noop(matrix: Project, targets: tuple[str, ...], stages: int) -> None:
    build(matrix)
    assert len(runs(matrix)) == 4
    r = traced(matrix, *targets)
    assert_fast(r)
    assert counts(r.err) == (0, stages, 0, 0)
    assert len(runs(matrix)) == 4
    assert history(matrix)[-1]["targets"] == list(targets)


def test_default_targets_are_a_fast_noop_for_what_they_need(chain: Project) -> None:
    chain.pivotfile("default b\n" + CHAIN)
    r = build(chain)
    assert counts(r.err) == (2, 0, 0, 0)
    chain.write("other.txt", "not needed by b\n")
    r = traced(chain)
    assert_fast(r)
    assert counts(r.err) == (0, 2, 0, 0)
    chain.write("in.txt", "needed\n")
    r = traced(chain)
    assert r.code == 0, r
    assert counts(r.err) == (2, 0, 0, 0)
    assert read(chain, "b.txt") == "NEEDED\n"
    assert not (chain.root / "c.txt").exists()


def test_a_target_is_decided_for_real_after_a_change(matrix: Project) -> None:
    build(matrix)
    matrix.write("in.txt", "new\n")
    r = traced(matrix, "solo")  # does not need prep: still a no-op
    assert_fast(r)
    assert counts(r.err) == (0, 1, 0, 0)
    r = traced(matrix, "train@small")
    assert r.code == 0, r
    assert counts(r.err) == (2, 0, 0, 0)
    assert read(matrix, "models/small.txt") == "small\nnew\n"
    assert read(matrix, "models/large.txt") == "large\ndata\n"
    r = traced(matrix, "train")
    assert counts(r.err) == (1, 2, 0, 0)
    assert read(matrix, "models/large.txt") == "large\nnew\n"


@pytest.mark.parametrize(
    ("target", "expected_runs"),
    [
        ("s*", ["solo"]),
        ("models/large.txt", ["prep", "train@large"]),
        ("train@*", ["prep", "train@small", "train@large"]),
    ],
)
def test_pattern_and_output_path_targets_give_correct_results(
    matrix: Project, target: str, expected_runs: list[str]
) -> None:
    build(matrix)
    r = traced(matrix, target)
    assert r.code == 0, r
    assert counts(r.err)[0] == 0, r.err
    assert counts(r.err)[1] >= 1, r.err
    assert len(runs(matrix)) == 4

    matrix.write("in.txt", "new\n")
    matrix.write("other.txt", "other2\n")
    before = runs(matrix)
    r = traced(matrix, target)
    assert r.code == 0, r
    assert sorted(runs(matrix)[len(before) :]) == sorted(expected_runs), r
    assert counts(r.err)[0] == len(expected_runs), r.err


def test_directory_and_file_options_work_in_the_fast_path(project: Project, tmp_path: Path) -> None:
    project.pivotfile(CHAIN, "work/Pivotfile")
    project.write("work/in.txt", "hello\n")
    project.write("work/other.txt", "other\n")
    project.write(
        "work/alt.pivot",
        "stage alt:\n    deps: other.txt\n    outs: alt.txt\n    run: cp $< $@; echo alt >> runs.log\n",
    )
    outside = tmp_path

    assert counts(build(project, "-C", "work").err) == (3, 0, 0, 0)
    for args, where in (
        (("-C", "work"), project.root),
        (("-Cwork",), project.root),
        (("--directory=work",), project.root),
        (("-C", "proj/work"), outside),
        (("-f", "Pivotfile"), project.root / "work"),
        (("-f", "work/Pivotfile"), project.root),
        (("-C", "work", "-f", "Pivotfile", "b"), project.root),
    ):
        r = traced(project, *args, cwd=where)
        assert_fast(r)
        assert counts(r.err)[0] == 0, (args, r.err)
    assert sorted((project.root / "work/runs.log").read_text().split()) == ["a", "b", "c"]

    r = build(project, "-f", "alt.pivot", cwd=project.root / "work")
    assert counts(r.err) == (1, 0, 0, 0)
    r = traced(project, "-f", "alt.pivot", cwd=project.root / "work")
    assert_fast(r)
    assert counts(r.err) == (0, 1, 0, 0)
    r = traced(project, "-C", "work")  # the other Pivotfile of the same directory
    assert r.code == 0, r
    assert counts(r.err) == (0, 3, 0, 0)
    assert_fast(traced(project, "-C", "work"))

    (project.root / "work/in.txt").write_text("changed\n")
    r = traced(project, "-C", "work")
    assert counts(r.err) == (2, 1, 0, 0)
    assert (project.root / "work/b.txt").read_text() == "CHANGED\n"


@pytest.mark.parametrize("args", [("trian",), ("train", "trian"), ("MSG=x", "trian"), ("-j", "2", "trian")])
def test_an_unknown_target_still_exits_2_with_a_suggestion(matrix: Project, args: tuple[str, ...]) -> None:
    matrix.pivotfile(MATRIX.replace("${model} > $@", "${model} ${MSG} > $@").replace("MODELS =", "MSG = m\nMODELS ="))
    build(matrix)
    assert_fast(traced(matrix))
    before = runs(matrix)
    r = traced(matrix, *args)
    assert r.code == 2, r
    assert r.err.startswith("pivotbuild: "), r.err
    assert "unknown target 'trian'" in r.err
    assert "did you mean 'train'" in r.err
    assert "Traceback" not in r.err
    assert runs(matrix) == before


def test_a_stage_named_like_a_command_is_not_taken_for_a_no_op(project: Project) -> None:
    project.pivotfile(
        """
        stage check:
            deps: in.txt
            outs: checked.txt
            run: cp $< $@; echo check >> runs.log
        """
    )
    project.write("in.txt", "x\n")
    build(project)
    r = traced(project, "check")  # the subcommand, not the stage
    assert r.code == 0, r
    assert "ok" in r.err, r.err
    assert "up to date" not in r.err, r.err
    r = traced(project, "repro", "check")
    assert r.code == 0, r
    assert counts(r.err) == (0, 1, 0, 0)


def test_an_output_changed_after_its_stage_ran_is_not_sealed_as_it_was(project: Project, tmp_path: Path) -> None:
    """An output rewritten by hand while the build still runs (after its stage
    ended and it was hashed) is not what the lockfile records: the next
    build is not a no-op, and brings back what the stage made (from the
    cache if it was stored before the change, else by running it again)."""
    project.pivotfile(
        """
        stage a:
            outs: a.txt
            run: echo made by a > a.txt

        stage slow:
            outs: slow.txt
            run: while [ ! -e go ]; do sleep 0.02; done; echo slow > slow.txt
        """
    )
    with background_build(project, tmp_path, "-j2", "--json") as proc:
        out = tmp_path / "bg.out"
        wait_until(lambda: '"stage": "a", "status": "ran"' in out.read_text(), 10, "a to finish")
        (project.root / "a.txt").write_text("changed by hand, a longer line\n")
        (project.root / "go").write_text("")
        assert proc.wait(timeout=30) == 0, (tmp_path / "bg.err").read_text()
    r = traced(project, "-s")
    assert not r.fast, r
    ran, up_to_date, restored, failed = counts(r.err)
    assert (ran + restored, up_to_date, failed) == (1, 1, 0)  # a, whichever way; slow up to date
    assert read(project, "a.txt") == "made by a\n"
    assert_fast(traced(project))
