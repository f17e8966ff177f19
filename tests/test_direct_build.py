"""Plain builds with work to do, run from the fast path without click
(cli/fast.py -> cli/direct.py), end to end: the real `pivotbuild` in temporary
projects.  Which path ran is seen without timing, under `python -X importtime`:
the direct path imports the engine but not click.  Each behaviour is compared
with the same build through click (`pivotbuild repro ...`, which the fast path
never takes), so the two paths cannot drift apart."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Project
from helpers import (
    CHAIN,
    DURATION,
    background_build,
    cache_digests,
    counts,
    events,
    finished,
    hung_pid,
    read,
    runs,
    wait_until,
)
from tracing import Traced, assert_fast, build, traced

from pivotbuild.build.executors.spawn import Starter
from pivotbuild.remote.config import PARSED_FRAME

# Holds the project lock at argv[1] (flock, as pivotbuild takes it) until killed; says "held".
HOLD_LOCK = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644); "
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
)

# The chain, but c fails unless other.txt says "good".
CHECKED_CHAIN = CHAIN.replace("cp $< $@; echo c", "grep -q good $< && cp $< $@; echo c")


def assert_direct(r: Traced, *, error: bool = False) -> None:
    """The build ran from the fast path: the engine decided, click's command tree
    was never built, and (unless there was an error to report) click was not imported."""
    assert "Traceback" not in r.err, r.err
    assert r.decided and "pivotbuild.cli.direct" in r.modules, r
    assert "pivotbuild.cli.app" not in r.modules, f"the command line went through click: {r}"
    if not error:
        assert "click" not in r.imported, r


def assert_click(r: Traced) -> None:
    assert "Traceback" not in r.err, r.err
    assert "click" in r.imported, r


def same_output(a: Traced, b: Traced) -> None:
    assert a.code == b.code, (a, b)
    assert a.out == b.out
    assert DURATION.sub(" in Ns", a.err) == DURATION.sub(" in Ns", b.err)


@pytest.fixture
def chain(chain: Project) -> Project:
    """The chain (conftest's), with CHECKED_CHAIN, built."""
    chain.pivotfile(CHECKED_CHAIN)
    chain.write("other.txt", "good\n")
    build(chain)  # compiles the plan and seals every stage
    (chain.root / "runs.log").unlink()
    return chain


def test_stages_over_directories_the_build_wrote_into_are_sealed_by_it(project: Project) -> None:
    """A build that runs a stage writing a directory (d), or writing into
    the directory a later stage's glob lists (gen/, for b), ends within that
    directory's racy window: nothing else makes it wait, as each file's
    first read proves its stamp (stamps.read_proves).  The seal waits those
    few ms for the directory rather than leave the stages unsealed, so the
    next no-op is answered by the fast path.  (Three rounds: before the
    wait, four builds in five left d unsealed, five in six b.)"""
    project.pivotfile(
        """
        stage d:
            deps: in.txt
            outs: d
            run: mkdir -p d/sub && cp in.txt d/f && cp in.txt d/sub/g
        stage a:
            deps: in.txt
            outs: gen/x.txt
            run: mkdir -p gen && cp in.txt gen/x.txt
        stage b:
            deps: gen/*.txt
            outs: b.txt
            run: cat gen/*.txt > b.txt
        """
    )
    for i in range(3):
        project.write("in.txt", f"{i}\n")
        build(project)
        assert_fast(traced(project))


def test_an_edit_reruns_the_stage_and_its_dependents_without_click(chain: Project) -> None:
    chain.write("in.txt", "changed\n")
    r = traced(chain, "-s")
    assert_direct(r)
    assert counts(r.err) == (2, 1, 0, 0)
    # b was sealed before the build began; its input changed under it, so it ran.
    assert runs(chain) == ["a", "b"]
    assert read(chain, "b.txt") == "CHANGED\n"
    assert_fast(traced(chain))  # and the build sealed the result


# What a build with work from a fresh plan never imports: the command line and the
# compiler (as the no-op), what serves only a watcher, a dry run, a config.toml, a
# misspelt name or a stage too big for the machine, tempfile (state/files.py), shutil
# and the bz2 and lzma it pulls (only a directory's removal needs it: files.remove_tree),
# and dataclasses and the inspect it pulls (the records are structs: pivotbuild/structs.py),
# platform, which the zstandard package imports to choose its backend (the lockfile's
# zstd is its C extension loaded alone: state/framing.py); json (fingerprints are
# its C encoder's text: state/snapshot.py), shlex (only a path that needs quoting),
# queue (its SimpleQueue is _queue's), termios (the job pool's count is Linux's ioctl)
# and typing (2 to 3 ms: annotations, Protocols and NamedTuples need it only when checked);
# where stages are spawned (build/executors/spawn.py), subprocess too.
NOT_FOR_A_BUILD = frozenset(
    ({"subprocess"} if Starter().spawns else set())
    | {
        "click",
        "rich",
        "lark",
        "networkx",
        "pivotbuild.pivotfile",
        "tomllib",
        "difflib",
        "tempfile",
        "shutil",
        "bz2",
        "lzma",
        "pivotbuild.build.watchset",
        "pivotbuild.build.executors.dry",
        "dataclasses",
        "inspect",
        "platform",
        "json",
        "shlex",
        "queue",
        "typing",
    }
    | ({"termios"} if sys.platform.startswith("linux") else set())
)


def test_a_build_with_work_imports_only_what_it_runs(chain: Project) -> None:
    chain.write("in.txt", "changed\n")
    r = traced(chain)
    assert_direct(r)
    assert counts(r.err) == (2, 1, 0, 0)
    assert sorted((r.imported | r.modules) & NOT_FOR_A_BUILD) == []


def test_a_build_reads_a_config_toml_when_there_is_one(chain: Project) -> None:
    # tomllib is imported only when there is a config; one that cannot be used is still seen.
    chain.write(".pivot/config.toml", "[core\n")
    chain.write("in.txt", "changed\n")
    r = traced(chain)
    assert_direct(r)
    assert "tomllib" in r.imported
    assert "pivotbuild: warning: " in r.err and "config.toml: not valid TOML" in r.err, r.err
    assert counts(r.err) == (2, 1, 0, 0)


def test_a_config_read_once_is_not_parsed_again_until_its_bytes_change(chain: Project) -> None:
    """What config.toml says is kept beside it with the bytes it was read
    from (.pivot/config.parsed): the next build takes it from there without
    importing tomllib; an edit (even of the same length, within the same
    second) is read at once; a kept copy that is damaged is read past."""
    config, kept = chain.root / ".pivot/config.toml", chain.root / ".pivot/config.parsed"
    b = chain.root / "b.txt"
    config.write_text('[core]\ncheckout = "hardlink"\n')
    chain.write("in.txt", "changed\n")
    r = traced(chain)
    assert_direct(r)
    assert "tomllib" in r.imported and counts(r.err) == (2, 1, 0, 0)
    assert b.stat().st_nlink == 2  # stored by link, as the config says
    chain.write("in.txt", "again\n")
    r = traced(chain)
    assert_direct(r)
    assert "tomllib" not in r.imported and counts(r.err) == (2, 1, 0, 0)
    assert b.stat().st_nlink == 2
    before = config.stat()
    config.write_text('[core]\ncheckout = "copy"\n   \n')  # as long as before
    assert config.stat().st_size == before.st_size
    chain.write("in.txt", "once more\n")
    r = traced(chain)
    assert "tomllib" in r.imported and counts(r.err) == (2, 1, 0, 0)
    assert b.stat().st_nlink == 1  # a copy, as the config now says
    kept.write_bytes(kept.read_bytes()[:-1] + b"!")  # its checksum no longer holds
    chain.write("in.txt", "and again\n")
    r = traced(chain)
    assert "tomllib" in r.imported and counts(r.err) == (2, 1, 0, 0)
    assert "warning" not in r.err and b.stat().st_nlink == 1
    # Kept by another pivotbuild (which may have checked it otherwise): read again.
    other = ["0.0.0-other", config.read_bytes(), {}, None, "hardlink", {}, "local", ""]
    kept.write_bytes(PARSED_FRAME.dump(other))
    chain.write("in.txt", "and once more\n")
    r = traced(chain)
    assert "tomllib" in r.imported and counts(r.err) == (2, 1, 0, 0)
    assert b.stat().st_nlink == 1
    r = traced(chain, "push")  # (a command that acts on the config: no remote configured, said as before)
    assert r.code != 0 and "no remote" in r.err, r.err


def test_a_sealed_stage_declared_before_its_upstream_still_sees_the_upstream_rerun(project: Project) -> None:
    """The fast path checks the seal in declaration order before the build, so
    `down` is found sealed before `up` is found stale; once `up` has run, that
    answer is out of date and `down` must be decided again."""
    project.pivotfile(
        """
        stage down:
            deps: mid.txt
            outs: down.txt
            run: tr a-z A-Z < $< > $@

        stage up:
            deps: in.txt
            outs: mid.txt
            run: cp $< $@
        """
    )
    project.write("in.txt", "one\n")
    build(project)
    assert_fast(traced(project))
    project.write("in.txt", "two\n")
    r = traced(project, "-s")
    assert_direct(r)
    assert counts(r.err) == (2, 0, 0, 0)
    assert read(project, "down.txt") == "TWO\n"


def test_stages_sealed_with_nothing_to_run_upstream_are_reported_and_stay_sealed(project: Project) -> None:
    """Of two branches, one edited: the other branch's stages are up to date
    before the build begins and nothing upstream of them runs, so the build
    only counts them; they are still reported (every stage once, in `--json`,
    which goes through click), a stage reading both branches still reruns,
    and the next build is a no-op the seal answers alone."""
    project.pivotfile(
        """
        stage a1:
            deps: a.txt
            outs: a1.txt
            run: cp $< $@; echo a1 >> runs.log

        stage a2:
            deps: a1.txt
            outs: a2.txt
            run: cp $< $@; echo a2 >> runs.log

        stage b1:
            deps: b.txt
            outs: b1.txt
            run: cp $< $@; echo b1 >> runs.log

        stage b2:
            deps: b1.txt
            outs: b2.txt
            run: cp $< $@; echo b2 >> runs.log

        stage both:
            deps: a2.txt b2.txt
            outs: both.txt
            run: cat $^ > $@; echo both >> runs.log
        """
    )
    project.write("a.txt", "a\n")
    project.write("b.txt", "b\n")
    build(project)
    (project.root / "runs.log").unlink()
    project.write("b.txt", "B\n")
    r = traced(project, "--json")
    assert_click(r)
    assert finished(r.out) == {
        "a1": ("skipped", "up to date"),
        "a2": ("skipped", "up to date"),
        "b1": ("ran", "dep b.txt changed"),
        "b2": ("ran", "dep b1.txt changed"),
        "both": ("ran", "dep b2.txt changed"),
    }
    started = [e for e in events(r.out) if e["event"] == "build_started"]
    assert [e["stages"] for e in started] == [5]
    done = [e for e in events(r.out) if e["event"] == "build_finished"]
    assert [(e["ran"], e["skipped"]) for e in done] == [(3, 2)]
    assert runs(project) == ["b1", "b2", "both"]
    assert read(project, "both.txt") == "a\nB\n"
    assert_fast(traced(project))
    # The settled branch kept its seal: an edit there is seen, and only there.
    (project.root / "runs.log").unlink()
    project.write("a.txt", "A\n")
    r = traced(project, "-s")
    assert_direct(r)
    assert counts(r.err) == (3, 2, 0, 0)
    assert runs(project) == ["a1", "a2", "both"]
    assert read(project, "both.txt") == "A\nB\n"
    # -v names each stage up to date, the settled ones too.
    project.write("b.txt", "b again\n")
    r = traced(project, "-v")
    assert_click(r)
    assert [line for line in r.out.splitlines() if line.startswith("up to date")] == [
        "up to date: a1",
        "up to date: a2",
    ]


def test_the_direct_path_prints_what_the_click_path_prints(chain: Project) -> None:
    for args in [(), ("-s",), ("b",), ("-j1", "-k")]:
        chain.write("in.txt", f"through click {args}\n")
        through_click = traced(chain, "repro", *args)
        assert_click(through_click)
        chain.write("in.txt", f"direct {args}\n")
        direct = traced(chain, *args)
        assert_direct(direct)
        same_output(direct, through_click)


def test_a_failing_stage_exits_1_with_the_same_report(chain: Project) -> None:
    chain.write("other.txt", "bad\n")
    through_click = traced(chain, "repro", "c")
    assert through_click.code == 1
    chain.write("other.txt", "worse\n")
    direct = traced(chain, "c")
    assert_direct(direct)
    same_output(direct, through_click)
    assert "c" in direct.err and "failed" in direct.err


def test_a_missing_source_is_the_same_clear_error(chain: Project) -> None:
    (chain.root / "in.txt").unlink()
    through_click = traced(chain, "repro")
    direct = traced(chain)
    assert_direct(direct, error=True)
    same_output(direct, through_click)
    assert direct.code == 2
    assert "'in.txt' does not exist and no stage writes it (needed by a)" in direct.err
    assert runs(chain) == []


def test_question_mode_exits_1_and_runs_nothing(chain: Project) -> None:
    chain.write("in.txt", "changed\n")
    r = traced(chain, "-q")
    assert_direct(r)
    assert r.code == 1
    assert runs(chain) == []
    assert build(chain).code == 0
    assert_fast(q := traced(chain, "-q"))
    assert q.code == 0


def test_directory_and_file_options(chain: Project, tmp_path: Path) -> None:
    chain.write("in.txt", "from outside\n")
    r = traced(chain, "-C", str(chain.root), "-s", cwd=tmp_path)
    assert_direct(r)
    assert counts(r.err) == (2, 1, 0, 0)
    assert read(chain, "b.txt") == "FROM OUTSIDE\n"
    chain.write("in.txt", "by file\n")
    r = traced(chain, "-f", str(chain.root / "Pivotfile"), "b", cwd=tmp_path)
    assert_direct(r)
    assert read(chain, "b.txt") == "BY FILE\n"


def test_no_cache_stores_nothing(chain: Project) -> None:
    cache = chain.root / ".pivot" / "cache"
    before = cache_digests(cache)
    chain.write("in.txt", "not to be cached\n")
    r = traced(chain, "--no-cache", "-s")
    assert_direct(r)
    assert counts(r.err) == (2, 1, 0, 0)
    assert cache_digests(cache) == before
    chain.write("in.txt", "cached\n")
    assert_direct(traced(chain, "-s"))
    assert cache_digests(cache) > before


def test_sigterm_stops_a_direct_build_with_130(project: Project, tmp_path: Path) -> None:
    project.pivotfile(
        """
        stage a:
            deps: in.txt
            outs: a.txt
            run: cp $< $@

        stage b:
            deps: a.txt
            outs: b.txt
            run: if grep -q hang a.txt; then sleep 60 & echo $! > b.pid; wait; fi; cp $< $@
        """
    )
    project.write("in.txt", "fine\n")
    assert build(project).code == 0
    project.write("in.txt", "hang\n")
    with background_build(project, tmp_path, "-j1") as proc:
        hung_pid(project)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("pivotbuild did not stop within 10s of SIGTERM") from None
    err = (tmp_path / "bg.err").read_text()
    assert code == 130, err
    assert "Traceback" not in err
    assert read(project, "a.txt") == "hang\n"  # a finished and was recorded
    project.write("in.txt", "fine\n")
    after = traced(project, "-s")
    assert_direct(after)
    assert counts(after.err)[3] == 0
    assert read(project, "b.txt") == "fine\n"


@pytest.mark.parametrize("plan", ["fresh", "none"])
def test_sigterm_while_waiting_for_the_lock_says_what_the_click_path_says(
    project: Project, tmp_path: Path, plan: str
) -> None:
    """Interrupted before the build began (here, waiting for another build's
    project lock), with the plan fresh or not compiled yet: the same words,
    lines and exit status as through click."""
    project.pivotfile("stage a:\n    outs: a.txt\n    run: echo hi > $@\n")
    if plan == "fresh":
        assert build(project).code == 0
        (project.root / "a.txt").unlink()  # work to do: the direct path builds
    said = {}
    for door in ((), ("repro",)):
        lock = str(project.root / ".pivot" / "build.lock")
        with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, lock], stdout=subprocess.PIPE, text=True) as holder:
            try:
                assert holder.stdout is not None and holder.stdout.readline() == "held\n"
                with subprocess.Popen(
                    [sys.executable, "-m", "pivotbuild", *door], cwd=project.root, stderr=subprocess.PIPE, text=True
                ) as waiter:
                    assert waiter.stderr is not None
                    first = waiter.stderr.readline()
                    assert "waiting for another pivotbuild" in first, first
                    waiter.send_signal(signal.SIGTERM)
                    _, rest = waiter.communicate(timeout=30)
                said[door] = (waiter.returncode, first + rest)
            finally:
                holder.kill()
    assert said[()] == said[("repro",)]
    code, err = said[()]
    assert code == 130 and err.endswith("\n\npivotbuild: interrupted\n"), err


def test_an_edit_made_while_the_build_runs_is_seen_when_its_stage_is_decided(project: Project) -> None:
    """The fast path checks the seal before the build; a stage decided later must
    see a file changed in between (here while `a` runs), as the click path does."""
    project.pivotfile(
        """
        stage a:
            deps: s.txt
            outs: a.txt
            run: sleep 2; echo same > $@

        stage b:
            deps: a.txt
            outs: b.txt
            run: cp $< $@

        stage c:
            deps: b.txt notes.txt
            outs: c.txt
            run: cat $^ > $@
        """
    )
    project.write("s.txt", "1\n")
    project.write("notes.txt", "n1\n")
    build(project)
    project.write("s.txt", "2\n")
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "pivotbuild", "-s"],
        cwd=project.root,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)  # a is running; b and c are not decided yet
    project.write("notes.txt", "n2\n")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "pivotbuild.cli.direct" in err  # the path under test
    assert read(project, "c.txt") == "same\nn2\n"


def test_an_edit_made_while_waiting_for_the_lock_is_seen(project: Project, tmp_path: Path) -> None:
    project.pivotfile(
        """
        stage s2:
            deps: src2.txt
            outs: s2.txt
            run: cp $< $@

        stage x:
            deps: srcx.txt
            outs: x.txt
            run: cp $< $@

        stage slow:
            deps: slow.txt
            outs: slow.out
            run: touch slow.started; sleep 4; exit 1
        """
    )
    for name in ("src2.txt", "srcx.txt", "slow.txt"):
        project.write(name, "a\n")
    build(project, "s2", "x")
    project.write("srcx.txt", "b\n")  # x must run: not a no-op, so the direct path builds
    # The holder fails, so it leaves the lockfile as it was (and the seal valid).
    with background_build(project, tmp_path, "slow") as holder:
        wait_until((project.root / "slow.started").exists, 20, "the holder's stage to start")
        waiter = subprocess.Popen(
            [sys.executable, "-m", "pivotbuild", "s2", "x"], cwd=project.root, stderr=subprocess.PIPE, text=True
        )
        assert waiter.stderr is not None
        first = waiter.stderr.readline()  # it checked the seal, and now waits for the lock
        assert "waiting for another pivotbuild" in first, first
        project.write("src2.txt", "CHANGED\n")
        _, rest = waiter.communicate(timeout=60)
        assert holder.wait(timeout=60) == 1
    assert waiter.returncode == 0, first + rest
    assert read(project, "s2.txt") == "CHANGED\n"
    assert read(project, "x.txt") == "b\n"


def test_repeated_directory_options_add_up_as_in_make(project: Project, tmp_path: Path) -> None:
    for where in ("a/b", "b"):
        project.pivotfile(f"stage o:\n    outs: o.txt\n    run: echo {where} > $@\n", rel=f"{where}/Pivotfile")
        (project.root / where / ".pivot").mkdir()
    through_click = traced(project, "-C", "a", "-C", "b", "repro", "-s", cwd=project.root)
    assert through_click.code == 0, through_click
    assert read(project, "a/b/o.txt") == "a/b\n"
    assert not (project.root / "b/o.txt").exists()
    (project.root / "a/b/o.txt").unlink()
    (project.root / "a/b/.pivot/seal").unlink()
    direct = traced(project, "-C", "a", "-C", "b", "-s", cwd=project.root)
    assert_direct(direct)
    assert read(project, "a/b/o.txt") == "a/b\n"
    assert not (project.root / "b/o.txt").exists()


def test_a_target_the_plan_cannot_select_is_built_in_the_directory_minus_C_names(
    project: Project, tmp_path: Path
) -> None:
    """The fast path enters the -C directories to read the plan there; a
    pattern is the graph's to resolve, not the plan's: the engine loads the
    project itself, in the directory -C names, still without click; and a
    name that matches nothing is the same error as through click."""
    project.pivotfile("stage o:\n    outs: o.txt\n    run: echo sub > $@\n", rel="sub/Pivotfile")
    (project.root / "sub/.pivot").mkdir()
    assert build(project, "-C", "sub", "-s").code == 0  # compiles the plan in sub/
    (project.root / "sub/o.txt").unlink()
    r = traced(project, "-C", "sub", "o*", "-s")
    assert r.code == 0, r
    assert_direct(r)
    assert counts(r.err) == (0, 0, 1, 0)  # from the cache of sub/
    assert read(project, "sub/o.txt") == "sub\n"
    through_click = traced(project, "-C", "sub", "repro", "x*")
    direct = traced(project, "-C", "sub", "x*")
    assert_direct(direct, error=True)
    same_output(direct, through_click)
    assert direct.code == 2 and "x*" in direct.err


@pytest.mark.parametrize("stale", ["no plan yet", "the Pivotfile edited"])
def test_a_build_that_must_compile_the_pivotfile_runs_without_click(chain: Project, stale: str) -> None:
    """No plan yet (a fresh checkout), or a Pivotfile edited since the last
    build: the engine compiles it and builds, as through click, and writes the
    plan the next build answers from."""
    if stale == "no plan yet":
        (chain.root / ".pivot" / "plan").unlink()
        chain.write("in.txt", "fresh checkout\n")
        expected, (made, text) = (2, 1, 0, 0), ("b.txt", "FRESH CHECKOUT\n")
    else:
        chain.pivotfile(CHECKED_CHAIN.replace("echo c >> runs.log", "echo c >> runs.log; echo edited > d.txt"))
        expected, (made, text) = (1, 2, 0, 0), ("d.txt", "edited\n")
    r = traced(chain, "-s")
    assert_direct(r)
    assert r.parsed
    assert counts(r.err) == expected
    assert read(chain, made) == text
    assert "typing" not in r.imported | r.modules  # (compiling needs it no more than building)
    assert_fast(traced(chain))


@pytest.mark.parametrize(
    ("pivotfile", "says"),
    [
        ("stage a\n    run: true\n", "Pivotfile:1"),  # a syntax error, located
        (None, "Pivotfile"),  # no Pivotfile at all
    ],
)
def test_a_pivotfile_that_does_not_load_is_the_same_error_as_through_click(
    project: Project, pivotfile: str | None, says: str
) -> None:
    if pivotfile is not None:
        project.pivotfile(pivotfile)
    through_click = traced(project, "repro")
    direct = traced(project)
    assert_direct(direct, error=True)
    same_output(direct, through_click)
    assert direct.code == 2 and says in direct.err
