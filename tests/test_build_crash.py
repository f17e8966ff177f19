"""Interrupted and killed builds end to end: Ctrl-C and SIGTERM stop cleanly with
exit 130, SIGKILL loses at most the stage that was running (the journal), and a
damaged journal is survived with a warning."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import Project
from helpers import (
    background_build,
    cache_digests,
    events,
    finished,
    gone,
    history,
    hung_pid,
    locked,
    runs,
    wait_until,
)

from pivotbuild.cache.store import Cache
from pivotbuild.state.hashing import hash_file

# b hangs (sleep 30, its pid in b.pid) the first time only, so the next build
# can show what it reruns without waiting.
PIPELINE = """
stage a:
    outs: a.txt
    run: echo a >> runs.log; echo a > $@

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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_the_build_with_130_and_keeps_finished_stages(
    project: Project, tmp_path: Path, sig: signal.Signals
) -> None:
    project.pivotfile(PIPELINE)
    with background_build(project, tmp_path, "-j1") as proc:
        pid = hung_pid(project)
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pivotbuild did not stop within 10s of {sig.name}") from None
        err = (tmp_path / "bg.err").read_text()
        assert code == 130, err
        assert "Traceback" not in err
        assert "interrupted" in err
        wait_until(lambda: gone(pid), 5, f"the stage's sleep ({pid}) to go away")

    assert (project.root / "a.txt").read_text() == "a\n"
    assert not (project.root / "b.txt").exists()
    assert locked(project) == {"a"}  # what finished before the interrupt is recorded

    r = project.run("--json", "-j1")
    assert r.code == 0, r
    done = finished(r)
    assert done["a"] == ("skipped", "up to date")
    assert done["b"][0] == "ran"
    assert runs(project) == ["a", "b", "b"]

    assert [e["result"] for e in history(project)] == ["interrupted", "ok"]


def _kill_mid_build(project: Project, tmp_path: Path, *, after_a_is_cached: bool = False) -> None:
    """Run the pipeline, SIGKILL pivotbuild while b runs, and clean up b ourselves.
    With `after_a_is_cached`, first wait until a's outputs are in the cache: they
    are copied there in the background, so a kill just after a stage finishes
    may lose its cache copy (never its result)."""
    project.pivotfile(PIPELINE)
    with background_build(project, tmp_path, "-j1") as proc:
        pid = hung_pid(project)
        deadline = time.monotonic() + 10
        cache = project.root / ".pivot" / "cache"
        while after_a_is_cached and not cache_digests(cache) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not after_a_is_cached or cache_digests(cache), "a's output never reached the cache"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        wait_until(lambda: gone(pid), 15, f"the stage's sleep ({pid}) to die with pivotbuild")
    assert runs(project) == ["a", "b"]


ORPHANS = """
stage s:
    outs: s.txt
    run:
        echo $$$$ > shell.pid
        sleep 300 &
        echo $! > child.pid
        (trap '' TERM; sleep 300) &
        echo $! > stubborn.pid
        wait
        echo done > $@
"""


def held(build: int, group: int) -> bool:
    """Whether the watchdog of the build `build` lists process group `group`
    in its table (its standard output: see build/executors/lifeline.py)."""
    for child in psutil.Process(build).children():
        with contextlib.suppress(psutil.Error, OSError):
            if "while read -r _" in " ".join(child.cmdline()):
                return str(group) in Path(f"/proc/{child.pid}/fd/1").read_text().split()
    return False


def test_a_stage_and_its_children_die_when_pivotbuild_is_killed(project: Project, tmp_path: Path) -> None:
    project.pivotfile(ORPHANS)
    with background_build(project, tmp_path) as proc:
        pid_files = [project.root / f"{name}.pid" for name in ("shell", "child", "stubborn")]
        wait_until(lambda: all(f.exists() and f.read_text().strip() for f in pid_files), 20, "the stage to start")
        pids = [int(f.read_text()) for f in pid_files]
        # The stage's group (its shell's pid) is held once the build has written
        # it into its watchdog's table, a moment after the stage starts.
        wait_until(lambda: held(proc.pid, pids[0]), 20, "the watchdog to hold the stage's group")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        try:
            # One that ignores SIGTERM too: it gets SIGKILL a moment later.
            wait_until(lambda: all(gone(p) for p in pids), 15, "the stage's processes to die with pivotbuild")
        finally:
            for p in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
    assert not (project.root / "s.txt").exists()


def test_after_sigkill_the_next_build_reruns_only_the_stage_that_was_running(project: Project, tmp_path: Path) -> None:
    _kill_mid_build(project, tmp_path)
    r = project.run("-n", "--json")  # the plan already sees what the journal kept
    assert r.code == 0, r
    plan = {e["stage"]: e for e in events(r)}
    assert plan["a"]["will_run"] is False
    assert plan["b"]["will_run"] is True
    assert runs(project) == ["a", "b"]

    r = project.run("--json", "-j1")
    assert r.code == 0, r
    assert "warning" not in r.err, r.err
    done = finished(r)
    assert done["a"] == ("skipped", "up to date")
    assert done["b"][0] == "ran"
    assert runs(project) == ["a", "b", "b"]
    assert locked(project) == {"a", "b"}
    assert (project.root / "b.txt").read_text() == "a\n"


def test_garbage_appended_to_the_journal_is_survived_with_a_warning(project: Project, tmp_path: Path) -> None:
    _kill_mid_build(project, tmp_path)
    journal = project.root / ".pivot" / "journal"
    assert journal.exists(), "a killed build leaves its journal behind"
    with journal.open("ab") as f:
        f.write(b"\x00\x00\x10\x00this is not a journal entry")
    r = project.run("--json", "-j1")
    assert r.code == 0, r
    warnings = [line for line in r.err.splitlines() if "journal" in line]
    assert len(warnings) == 1, r.err
    assert warnings[0].startswith("pivotbuild: ")
    assert "Traceback" not in r.err
    done = finished(r)
    assert done["a"] == ("skipped", "up to date")  # the good entry before the garbage counts
    assert done["b"][0] == "ran"

    r = project.run("--json")
    assert r.code == 0, r
    assert "warning" not in r.err, r.err
    assert set(finished(r).values()) == {("skipped", "up to date")}


def test_a_journal_cut_short_is_survived_with_a_warning(project: Project, tmp_path: Path) -> None:
    _kill_mid_build(project, tmp_path, after_a_is_cached=True)
    journal = project.root / ".pivot" / "journal"
    blob = journal.read_bytes()
    journal.write_bytes(blob[: len(blob) - 5])  # the entry for a loses its end
    r = project.run("--json", "-j1")
    assert r.code == 0, r
    assert sum("journal" in line for line in r.err.splitlines()) == 1, r.err
    assert "Traceback" not in r.err
    done = finished(r)
    # Its journal record was damaged and is not trusted: a is not "up to date".
    # (A kill cannot do this: each record is one write.  The run cache holds
    # no entry for a record that never reached the lockfile, so a runs again.)
    assert done["a"][0] == "ran"
    assert done["b"][0] == "ran"
    assert locked(project) == {"a", "b"}


def test_a_garbage_journal_after_a_complete_build_keeps_the_lockfile(project: Project) -> None:
    project.pivotfile(PIPELINE)
    project.write("hung.once", "")
    r = project.run("--json")
    assert r.code == 0, r
    (project.root / ".pivot" / "journal").write_bytes(b"\xff" * 37)
    r = project.run("--json")
    assert r.code == 0, r
    assert sum("journal" in line for line in r.err.splitlines()) == 1, r.err
    assert set(finished(r).values()) == {("skipped", "up to date")}


def test_outputs_a_killed_build_had_not_cached_yet_are_cached_by_the_next(project: Project, tmp_path: Path) -> None:
    # Outputs reach the cache in the background, moments after their stage ends;
    # a SIGKILL in that moment keeps the result (the journal) but not the copy.
    _kill_mid_build(project, tmp_path)
    shutil.rmtree(project.root / ".pivot" / "cache", ignore_errors=True)  # as if the kill came first
    r = project.run("--json", "-j1")
    assert r.code == 0, r
    assert finished(r)["a"] == ("skipped", "up to date")
    assert runs(project) == ["a", "b", "b"]  # a did not run again...
    assert Cache(project.root / ".pivot" / "cache").has(hash_file(project.root / "a.txt"))  # ...but is cached
    (project.root / "a.txt").unlink()
    r = project.run("--json", "-j1")
    assert r.code == 0, r
    assert finished(r)["a"][0] == "restored"  # and the run cache knows it
    assert runs(project) == ["a", "b", "b"]


def test_a_directory_output_a_killed_build_had_not_cached_is_cached_by_the_next(project: Project) -> None:
    project.pivotfile(
        """
stage a:
    outs: d/
    run: mkdir -p $@/sub && echo one > $@/one.txt && echo two > $@/sub/two.txt && echo a >> runs.log
stage b:
    deps: d/
    outs: b.txt
    run:
        echo b >> runs.log
        if [ ! -e killed.once ]; then touch killed.once; kill -9 $PPID; sleep 5; fi
        ls $< > $@
"""
    )
    r = project.run("-j1")
    assert r.code != 0  # pivotbuild itself was killed
    shutil.rmtree(project.root / ".pivot" / "cache", ignore_errors=True)  # as if before the copy
    r = project.run("-j1")
    assert r.code == 0, r.err
    assert runs(project) == ["a", "b", "b"]  # a was not run again
    shutil.rmtree(project.root / "d")
    r = project.run("checkout")
    assert r.code == 0, r.err
    assert (project.root / "d/sub/two.txt").read_text() == "two\n"
