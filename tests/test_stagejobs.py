"""pivotbuild as a jobserver for its stages (build/sharedpool.py, makejobs.py
`for_stage`): a `make` or `ninja` inside a stage shares pivotbuild's `-j`
budget (or make's, when pivotbuild runs under make) instead of multiplying
it.  Real make 4.3, real ninja (PyPI's 1.13), real fifos and pipes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project
from helpers import HANG_GUARD_S, wait_until
from test_makejobs import TIMED, most_at_once, timed_stages, tokens_left

from pivotbuild.build.makejobs import stage_makeflags
from pivotbuild.build.sharedpool import SharedPool, _own_directory

NINJA = str(Path(sys.executable).with_name("ninja"))


def sub_make(project: Project, log: Path, jobs: int = 8) -> None:
    """sub.mk: `jobs` timed jobs, none depending on another (`make -f sub.mk` runs them)."""
    names = " ".join(f"t{i}" for i in range(jobs))
    run = TIMED.format(log=log, s=0.3).replace("$", "$$").replace("touch $$@", "true")
    project.write("sub.mk", f"all: {names}\n{names}:\n\t@{run}\n.PHONY: all {names}\n")


def sub_ninja(project: Project, log: Path, jobs: int = 8) -> None:
    """build.ninja: `jobs` timed edges, none depending on another."""
    run = TIMED.format(log=log, s=0.3).replace("$", "$$").replace("touch $$@", "touch $out")
    edges = "".join(f"build n{i}: timed\n" for i in range(jobs))
    project.write("build.ninja", f"rule timed\n  command = {run}\n{edges}")


CHILDREN = {
    "make": ("sub.mk", "make -s -f sub.mk", sub_make),
    "ninja": ("build.ninja", f"{NINJA} > ninja.log", sub_ninja),
}


def build(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIVOTBUILD, "-s", *args],
        cwd=project.root,
        env=env or {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"},
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S * 2,
    )


@pytest.mark.parametrize("child", ["make", "ninja"])
def test_a_make_or_ninja_in_a_stage_runs_as_many_jobs_as_pivotbuilds_j(
    project: Project, tmp_path: Path, child: str
) -> None:
    log = tmp_path / "log.txt"
    _, command, write = CHILDREN[child]
    write(project, log)
    project.pivotfile(f"stage sub:\n    outs: done.txt\n    run: {command} && touch done.txt\n")
    r = build(project, "-j4")  # (ninja's own default is never 4: 3 on 2 CPUs, CPUs + 2 on more)
    assert r.returncode == 0, r.stderr
    assert most_at_once(log) == 4  # its one token, and the three it borrowed from pivotbuild's pool


@pytest.mark.parametrize("child", ["make", "ninja"])
def test_beside_other_stages_a_child_build_never_takes_more_than_the_budget(
    project: Project, tmp_path: Path, child: str
) -> None:
    log = tmp_path / "log.txt"
    _, command, write = CHILDREN[child]
    write(project, log)
    project.pivotfile(
        f"stage sub:\n    outs: done.txt\n    run: {command} && touch done.txt\n\n" + timed_stages(4, log, 0.5)
    )
    r = build(project, "-j3")
    assert r.returncode == 0, r.stderr
    assert most_at_once(log) == 3  # the other stages' and the sub-build's jobs, all under one -j3
    assert len(log.read_text().splitlines()) == 2 * (8 + 4)  # every job ran, start and end


def test_a_python_stage_passes_the_pool_to_the_make_it_starts(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    sub_make(project, log)
    project.write(
        "mk.py",
        """
        import subprocess
        def run(ctx):
            subprocess.run(["make", "-s", "-f", "sub.mk"], check=True, close_fds=False)  # (as make's recipes must)
            open(ctx.outs[0], "w").write("ok")
        """,
    )
    project.pivotfile("stage sub:\n    outs: done.txt\n    py: mk:run\n")
    r = build(project, "-j4")
    assert r.returncode == 0, r.stderr
    assert most_at_once(log) == 4  # the descriptors its MAKEFLAGS names are open in the function's process


def test_under_make_a_stages_make_borrows_from_makes_pool(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    sub_make(project, log)
    project.pivotfile(
        "stage sub:\n    outs: done.txt\n    run: make -s -f sub.mk && touch done.txt\n\n" + timed_stages(2, log)
    )
    project.write("Makefile", f"all:\n\t+{' '.join(PIVOTBUILD)} -s\n")
    r = subprocess.run(
        ["make", "-j4", "-s"], cwd=project.root, capture_output=True, text=True, check=False, timeout=HANG_GUARD_S * 2
    )
    assert r.returncode == 0, r.stderr
    assert most_at_once(log) == 4  # make's -j4 in all, not pivotbuild's stages plus a pool of their own


def test_with_a_j_of_its_own_under_make_its_stages_share_that(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    sub_make(project, log)
    project.pivotfile("stage sub:\n    outs: done.txt\n    run: make -s -f sub.mk && touch done.txt\n")
    project.write("Makefile", f"all:\n\t+{' '.join(PIVOTBUILD)} -s -j2\n")
    r = subprocess.run(
        ["make", "-j8", "-s"], cwd=project.root, capture_output=True, text=True, check=False, timeout=HANG_GUARD_S * 2
    )
    assert r.returncode == 0, r.stderr
    assert most_at_once(log) == 2


def test_each_stage_has_descriptors_of_its_own(project: Project) -> None:
    # ninja sets O_NONBLOCK on the read end it is given: that must not reach
    # the make of another stage (nor make's own pipe).
    nonblock = (
        "import os,re;"
        "r=int(re.search(r'jobserver-fds=(\\d+),',os.environ['MAKEFLAGS']).group(1));"
        "os.set_blocking(r,False);open('one.txt','w').write('set')"
    )
    check = (
        "import os,re;"
        "r=int(re.search(r'jobserver-fds=(\\d+),',os.environ['MAKEFLAGS']).group(1));"
        "open('two.txt','w').write(str(os.get_blocking(r)))"
    )
    project.pivotfile(
        f'stage one:\n    outs: one.txt\n    run: {sys.executable} -c "{nonblock}"\n\n'
        f'stage two:\n    deps: one.txt\n    outs: two.txt\n    run: {sys.executable} -c "{check}"\n'
    )
    r = build(project, "-j2")
    assert r.returncode == 0, r.stderr
    assert (project.root / "two.txt").read_text() == "True"


def test_the_makeflags_a_stage_gets(project: Project) -> None:
    project.pivotfile('stage s:\n    outs: flags.txt\n    run: echo "$MAKEFLAGS" > flags.txt\n')
    env = {**os.environ, "MAKEFLAGS": "k -j9 --jobserver-auth=97,98 --no-print-directory -- CC=gcc"}
    r = build(project, "-j3", env=env)
    assert r.returncode == 0, r.stderr
    words = (project.root / "flags.txt").read_text().split()
    assert words[:3] == ["k", "--no-print-directory", "-j3"]  # make's other flags kept; our -j
    assert words[3].startswith("--jobserver-auth=fifo:") and words[4].startswith("--jobserver-fds=")
    assert words[5:] == ["--", "CC=gcc"]
    assert not Path(words[3].removeprefix("--jobserver-auth=fifo:")).exists()  # removed with the build


@pytest.mark.parametrize(
    ("outer", "expected"),
    [
        ("", " -j4 --jobserver-auth=fifo:/t/f --jobserver-fds=5,6"),
        (" -j8 --jobserver-auth=3,4", " -j4 --jobserver-auth=fifo:/t/f --jobserver-fds=5,6"),
        ("ks -j --jobserver-fds=3,4", "ks -j4 --jobserver-auth=fifo:/t/f --jobserver-fds=5,6"),
        (" --trace -- X=1 -j2", " --trace -j4 --jobserver-auth=fifo:/t/f --jobserver-fds=5,6 -- X=1 -j2"),
        (
            "-j 8 -k --jobs=3",
            " -k -j4 --jobserver-auth=fifo:/t/f --jobserver-fds=5,6",
        ),  # (a stage's own env: MAKEFLAGS)
    ],
)
def test_stage_makeflags_put_our_pool_in_place_of_any_other(outer: str, expected: str) -> None:
    assert stage_makeflags(outer, 4, 5, 6, "/t/f") == expected
    assert stage_makeflags(outer, 4, 5, 6, None) == expected.replace("fifo:/t/f --jobserver-fds=5,6", "5,6")


def test_the_pool_holds_j_minus_one_tokens_and_is_topped_up_when_nothing_runs(tmp_path: Path) -> None:
    pool = SharedPool(4)
    try:
        assert pool.try_acquire(1)  # (the implicit token: nothing read)
        _, (r, w) = pool.for_stage("") or ("", (-1, -1))
        try:
            assert os.read(r, 2) == b"++"  # a stage's make takes two of the three...
        finally:
            os.close(r)
            os.close(w)  # ...and is killed with them
        assert pool.try_acquire(1)  # the third
        assert not pool.try_acquire(1)  # the pool is dry: 4 jobs out
        pool.release(1)
        pool.release(1)
        pool.settle()  # nothing of ours runs and the build loop waits: the pool is back to 3
        fifo = pool.fifo
        assert fifo is not None and Path(fifo).exists()
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert tokens_left(reader) == 3
        finally:
            os.close(reader)
    finally:
        pool.close()
    assert not Path(fifo).exists()


def test_with_every_token_out_with_our_stages_the_pool_is_full_without_a_read() -> None:
    pool = SharedPool(2)
    try:
        assert pool.try_acquire(1) and pool.try_acquire(1)  # the implicit token, then the pool's one
        assert pool.available() == 0  # (known, not found by a read that fails)
        pool.release(1)
        assert pool.available() == 1
        assert pool.try_acquire(1)
        assert pool.available() == 0
    finally:
        pool.close()


def test_the_fifo_is_made_in_tmpdir_and_removed_however_the_build_ends(project: Project, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    own = tmp / f"pivotbuild-{os.getuid()}"  # (the user's own directory there: 0700)
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("MAKEFLAGS", None)
    project.pivotfile(
        f"stage ok:\n    outs: a.txt\n    run: ls {own} > a.txt\n\n"
        "stage bad:\n    deps: a.txt\n    outs: b.txt\n    run: exit 3\n\n"
        "stage hang:\n    deps: b.txt\n    outs: c.txt\n    run: exec sleep 30\n"
    )
    assert build(project, "ok", env=env).returncode == 0
    assert (project.root / "a.txt").read_text().startswith("pivotbuild-jobs-")  # the pool, while it ran
    assert os.listdir(tmp) == [own.name] and os.listdir(own) == []
    assert stat.S_IMODE(own.stat().st_mode) == 0o700
    assert build(project, "bad", env=env).returncode == 1
    assert os.listdir(own) == []
    project.pivotfile("stage hang:\n    outs: c.txt\n    run: touch started; exec sleep 30\n")
    proc = subprocess.Popen(
        [*PIVOTBUILD, "-s"], cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until((project.root / "started").exists, HANG_GUARD_S, "the stage to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=HANG_GUARD_S) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert os.listdir(own) == []


def test_a_j_larger_than_a_pipe_holds_builds(project: Project) -> None:
    project.pivotfile(timed_stages(2, project.root / "log.txt", 0.1))
    r = build(project, "-j100000")
    assert r.returncode == 0, r.stderr
    pool = SharedPool(100000)
    try:
        assert pool.try_acquire(1)
        assert pool.capacity <= (1 << 16) + 1  # what the pipe holds, plus the implicit token
        assert pool.try_acquire(1)
    finally:
        pool.close()


def test_sighup_ends_the_build_as_ctrl_c_does_and_stale_fifos_are_swept(project: Project, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    own = tmp / f"pivotbuild-{os.getuid()}"
    own.mkdir(mode=0o700, parents=True)
    stale = own / "pivotbuild-jobs-999999999-00000000"  # (above any pid_max: no such process)
    os.mkfifo(stale)
    live = own / f"pivotbuild-jobs-{os.getpid()}-00000000"  # (a running process's: kept)
    os.mkfifo(live)
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("MAKEFLAGS", None)
    project.pivotfile("stage hang:\n    outs: c.txt\n    run: touch started; exec sleep 30\n")
    # The build starts with SIGHUP at its default, as from a terminal's shell, even
    # where the tests run under `nohup` (its builds then rightly ignore a hangup).
    was = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        proc = subprocess.Popen(
            [*PIVOTBUILD, "-s"], cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    finally:
        signal.signal(signal.SIGHUP, was)
    try:
        wait_until((project.root / "started").exists, HANG_GUARD_S, "the stage to start")
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=HANG_GUARD_S) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(os.listdir(own)) == [live.name]  # the build's own fifo removed, the stale one swept


def test_the_fifos_directory_is_the_users_own_or_tmpdir_itself(tmp_path: Path) -> None:
    # $TMPDIR/pivotbuild-UID holds this user's pools (so that sweeping a killed
    # build's fifo lists a handful of names, not all of /tmp); made 0700 if
    # missing, and used only while it is a directory of ours that no one else
    # may enter: anything else there leaves the fifo in $TMPDIR itself.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    own = tmp / f"pivotbuild-{os.getuid()}"
    assert _own_directory(str(tmp)) == str(own)
    assert stat.S_IMODE(own.stat().st_mode) == 0o700
    assert _own_directory(str(tmp)) == str(own)  # (there already)
    own.chmod(0o755)
    assert _own_directory(str(tmp)) == str(tmp)
    own.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    own.symlink_to(elsewhere)
    assert _own_directory(str(tmp)) == str(tmp)
    own.unlink()
    own.write_text("a file")
    assert _own_directory(str(tmp)) == str(tmp)
    own.unlink()
    if os.getuid() == 0:  # (only root can hand a directory to another user)
        own.mkdir(mode=0o700)
        os.chown(own, 4242, -1)
        assert _own_directory(str(tmp)) == str(tmp)
    assert _own_directory(str(tmp_path / "missing")) == str(tmp_path / "missing")


def test_a_build_whose_fifos_directory_is_not_its_own_uses_tmpdir(project: Project, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    own = tmp / f"pivotbuild-{os.getuid()}"
    own.mkdir(parents=True, mode=0o777)
    own.chmod(0o777)  # (open to everyone: not for the build's pipes)
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("MAKEFLAGS", None)
    project.pivotfile(f"stage ok:\n    outs: a.txt\n    run: ls {tmp} > a.txt\n")
    assert build(project, "ok", env=env).returncode == 0
    listed = (project.root / "a.txt").read_text().split()
    assert own.name in listed and any(n.startswith("pivotbuild-jobs-") for n in listed)
    assert os.listdir(own) == [] and sorted(os.listdir(tmp)) == [own.name]


def test_the_descriptors_of_the_next_stage_are_opened_ahead_each_for_one_stage_and_none_left_open() -> None:
    """The build loop has the next stage's descriptors opened while the others
    run (`restock`): a start takes them, each pair goes to one stage alone,
    and those no stage took are closed with the pool."""

    def open_fds() -> set[int]:
        return {int(fd) for fd in os.listdir("/proc/self/fd")}

    before = open_fds()
    pool = SharedPool(2)
    assert pool.try_acquire(1)
    pool.restock()
    ahead = open_fds() - before
    first = pool.for_stage("")
    assert first is not None and set(first[1]) <= ahead  # (the pair opened ahead)
    second = pool.for_stage("")  # none ahead: opened now
    assert second is not None and not set(second[1]) & set(first[1])
    for fd in (*first[1], *second[1]):
        os.close(fd)  # (as the executor does once each stage has started)
    pool.restock()
    pool.restock()  # (one pair ahead at most)
    assert len(open_fds() - before) == len(ahead)
    pool.release(1)
    pool.close()
    assert open_fds() <= before
