"""pivotbuild as a client of GNU make's jobserver (build/makejobs.py): under
`make -jN` it runs as many stages as make's pool allows, shares the pool with
make's other jobs, gives every token back however the build ends, and falls
back to its own -j when the pool cannot be used.  Real make 4.3, real pipes."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project
from helpers import HANG_GUARD_S, wait_until

from pivotbuild.build.makejobs import MakeFlags, MakeJobServer, connect, parse_makeflags

# Each stage logs its start and end (with the fine clock) to LOG, an absolute path.
TIMED = "echo start $(date +%s.%N) >> {log}; sleep {s}; echo end $(date +%s.%N) >> {log}; touch $@"


def timed_stages(n: int, log: Path, seconds: float = 0.3) -> str:
    run = TIMED.format(log=log, s=seconds)
    return "\n".join(f"stage s{i}:\n    outs: o{i}.txt\n    run: {run}\n" for i in range(n))


def most_at_once(log: Path) -> int:
    events = sorted(
        (float(t), 1 if kind == "start" else -1) for kind, t in (line.split() for line in log.read_text().splitlines())
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_under_make_j4_four_stages_run_at_once(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    project.pivotfile(timed_stages(8, log))
    project.write("Makefile", f"all:\n\t+{' '.join(PIVOTBUILD)} -s\n")
    r = subprocess.run(["make", "-j4", "-s"], cwd=project.root, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert most_at_once(log) == 4  # make's pool, not this machine's CPU count


def test_two_pivotbuilds_under_make_j3_share_its_pool(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    for name in ("one", "two"):
        (tmp_path / name / ".pivot").mkdir(parents=True)
        (tmp_path / name / "Pivotfile").write_text(timed_stages(4, log))
    cmd = " ".join(PIVOTBUILD)
    (tmp_path / "Makefile").write_text(f"all: one two\none two:\n\t+{cmd} -C $@ -s\n.PHONY: all one two\n")
    r = subprocess.run(["make", "-j3", "-s"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert most_at_once(log) == 3


@pytest.fixture
def pool() -> Iterator[Callable[[int], tuple[int, int]]]:
    """Makes jobserver pipes of our own holding some tokens, as make makes one
    (closed afterwards)."""
    made: list[int] = []

    def make(tokens: int) -> tuple[int, int]:
        r, w = os.pipe()
        os.write(w, b"+" * tokens)
        made.extend((r, w))
        return r, w

    yield make
    for fd in made:
        os.close(fd)


def tokens_left(r: int) -> int:
    os.set_blocking(r, False)
    count = 0
    try:
        while chunk := os.read(r, 64):
            count += len(chunk)
    except BlockingIOError:
        pass
    return count


def under_pool(r: int, w: int, jobs: int = 4) -> dict[str, str]:
    return {**os.environ, "MAKEFLAGS": f" -j{jobs} --jobserver-auth={r},{w}"}


def build_in_pool(p: Project, r: int, w: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`pivotbuild ARGS` as a `+` recipe of `make -j4` would run it, its pool the pipe (r, w)."""
    return subprocess.run(
        [*PIVOTBUILD, *args],
        cwd=p.root,
        env=under_pool(r, w),
        pass_fds=(r, w),
        capture_output=True,
        text=True,
        check=False,
        timeout=HANG_GUARD_S,
    )


FAILING = """
stage ok1:
    outs: a.txt
    run: sleep 0.3; touch $@
stage ok2:
    outs: b.txt
    run: sleep 0.3; touch $@
stage bad:
    outs: c.txt
    run: sleep 0.1; exit 3
"""


def test_every_token_goes_back_after_a_failure(project: Project, pool: Callable[[int], tuple[int, int]]) -> None:
    project.pivotfile(FAILING)
    r, w = pool(3)
    proc = build_in_pool(project, r, w, "-k", "-s")
    assert proc.returncode == 1, proc.stderr
    assert tokens_left(r) == 3


HELD = """
stage hold{i}:
    outs: h{i}.txt
    run: echo $$$$ > hold{i}.pid; exec sleep 30
"""


@pytest.mark.parametrize("how", ["ctrl-c", "stage-killed"])
def test_every_token_goes_back_when_interrupted_or_a_stage_is_killed(
    project: Project, how: str, pool: Callable[[int], tuple[int, int]]
) -> None:
    project.pivotfile("\n".join(HELD.format(i=i) for i in range(3)))
    r, w = pool(3)
    proc = subprocess.Popen(
        [*PIVOTBUILD, "-s"],
        cwd=project.root,
        env=under_pool(r, w),
        pass_fds=(r, w),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        pids = [project.root / f"hold{i}.pid" for i in range(3)]
        wait_until(lambda: all(p.exists() and p.read_text().strip() for p in pids), HANG_GUARD_S, "three stages")
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=HANG_GUARD_S) == 130
        else:
            for p in pids:
                os.kill(int(p.read_text()), signal.SIGKILL)
            assert proc.wait(timeout=HANG_GUARD_S) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert tokens_left(r) == 3  # the two its stages read besides its implicit one, given back


def test_a_pool_that_is_not_open_warns_once_and_builds_with_its_own_j(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    project.pivotfile(timed_stages(2, log, 0.1))
    env = {**os.environ, "MAKEFLAGS": " -j4 --jobserver-auth=97,98"}
    r = subprocess.run([*PIVOTBUILD, "-s"], cwd=project.root, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: make's jobserver (--jobserver-auth=97,98 in MAKEFLAGS) cannot be used") == 1
    assert "mark the recipe with '+'" in r.stderr


def test_a_j_of_its_own_wins_over_makes_pool(
    project: Project, tmp_path: Path, pool: Callable[[int], tuple[int, int]]
) -> None:
    log = tmp_path / "log.txt"
    project.pivotfile(timed_stages(3, log, 0.2))
    r, w = pool(3)
    proc = build_in_pool(project, r, w, "-j1", "-s")
    assert proc.returncode == 0, proc.stderr
    assert most_at_once(log) == 1
    assert tokens_left(r) == 3  # none taken


@pytest.mark.parametrize(
    ("flags", "parsed"),
    [
        (" -j4 --jobserver-auth=3,4", MakeFlags(4, (3, 4), None, False, "3,4")),
        ("ks -j8 --jobserver-fds=5,6 --jobserver-auth=7,8", MakeFlags(8, (7, 8), None, False, "7,8")),
        ("n -j2 --jobserver-auth=fifo:/tmp/GMfifo1", MakeFlags(2, None, "/tmp/GMfifo1", True, "fifo:/tmp/GMfifo1")),
        ("-- X=--jobserver-auth=1,2", MakeFlags()),
        ("", MakeFlags()),
    ],
)
def test_makeflags_say_where_makes_pool_is(flags: str, parsed: MakeFlags) -> None:
    assert parse_makeflags(flags) == parsed


def test_a_make_4_4_fifo_pool_is_used_and_given_back(project: Project, tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    project.pivotfile(timed_stages(6, log))
    fifo = tmp_path / "GMfifo"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # (make holds its fifo open so)
    try:
        os.write(keep, b"+++")
        env = {**os.environ, "MAKEFLAGS": f" -j4 --jobserver-auth=fifo:{fifo}"}
        r = subprocess.run([*PIVOTBUILD, "-s"], cwd=project.root, env=env, capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        assert most_at_once(log) == 4
        assert tokens_left(keep) == 3
    finally:
        os.close(keep)


def test_a_stage_wanting_more_tokens_than_the_pool_holds_starts_when_nothing_else_of_ours_runs(
    project: Project, pool: Callable[[int], tuple[int, int]]
) -> None:
    # make's other jobs hold the rest: waiting for 3 tokens could wait for ever.
    project.pivotfile("stage big:\n    jobs: 3\n    outs: big.txt\n    run: sleep 0.2; touch $@\n")
    r, w = pool(1)
    proc = build_in_pool(project, r, w, "-s")
    assert proc.returncode == 0, proc.stderr
    assert tokens_left(r) == 1


def test_two_pivotbuilds_of_big_stages_under_make_j3_both_finish(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name / ".pivot").mkdir(parents=True)
        (tmp_path / name / "Pivotfile").write_text(
            "stage big:\n    jobs: 3\n    outs: b.txt\n    run: sleep 0.5; touch $@\n"
        )
    cmd = " ".join(PIVOTBUILD)
    (tmp_path / "Makefile").write_text(f"all: one two\none two:\n\t+{cmd} -C $@ -s\n.PHONY: all one two\n")
    r = subprocess.run(
        ["make", "-j3", "-s"], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=HANG_GUARD_S
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "one" / "b.txt").exists() and (tmp_path / "two" / "b.txt").exists()


def test_tokens_owed_are_paid_first_and_every_token_comes_back(pool: Callable[[int], tuple[int, int]]) -> None:
    r, w = pool(1)
    server = connect(MakeFlags(4, (r, w)))
    assert isinstance(server, MakeJobServer)
    assert server.try_acquire(3)  # nothing else of ours runs: the implicit token, the one read, one owed
    assert not server.try_acquire(1)  # the pool is empty now
    os.write(w, b"+")  # make's other job ends
    time.sleep(0.02)  # (past the moment the empty pool stands for)
    assert server.try_acquire(1)
    server.release(3)  # the big stage ends: its debt, then two tokens read
    assert tokens_left(r) == 0  # (kept for the build loop's next start...)
    server.settle()
    assert tokens_left(r) == 2  # (...and given back before it waits)
    os.write(w, b"++")
    server.release(1)  # the small one ends on the implicit token
    assert server.try_acquire(1)  # (the implicit token again: nothing read)
    server.close()
    assert tokens_left(r) == 2


def test_a_token_a_stage_ends_with_goes_to_the_next_start_or_back_to_make(
    pool: Callable[[int], tuple[int, int]],
) -> None:
    r, w = pool(2)
    server = connect(MakeFlags(3, (r, w)))
    assert isinstance(server, MakeJobServer)

    def queued() -> int:  # tokens in make's pipe (counted, not read)
        count = bytearray(4)
        fcntl.ioctl(r, termios.FIONREAD, count)
        return int.from_bytes(count, "little")

    assert server.try_acquire(1) and server.try_acquire(1)  # the implicit token, then one read
    assert queued() == 1
    server.release(1)  # a stage ends...
    assert server.try_acquire(1)  # ...and the next starts on its token: the pipe is not touched
    assert queued() == 1
    server.release(1)
    server.settle()  # nothing else could start: the token goes back to make
    assert queued() == 2
    assert server.try_acquire(1)  # (read again)
    assert queued() == 1
    server.close()
    assert queued() == 2


def test_under_make_n_a_build_is_a_dry_run(project: Project) -> None:
    project.pivotfile("stage a:\n    outs: a.txt\n    run: echo built > $@\n")
    project.write("Makefile", f"all:\n\t+{' '.join(PIVOTBUILD)}\n")
    r = subprocess.run(["make", "-n", "-s"], cwd=project.root, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "would run a: never run" in r.stdout
    assert not (project.root / "a.txt").exists()
    r = subprocess.run(["make", "-s"], cwd=project.root, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert (project.root / "a.txt").read_text() == "built\n"


def test_the_last_stages_tokens_go_back_before_the_build_stores_and_seals(
    project: Project, pool: Callable[[int], tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens kept for a next start (makejobs: `_spare`) go back to make as the
    build loop ends, not after the storing, the lockfile and the seal.  (In
    process, to look at make's pipe as the build stores.)"""
    from pivotbuild.build import recorder
    from pivotbuild.cli import main

    r, w = pool(3)
    project.pivotfile("stage big:\n    outs: a.txt\n    jobs: 3\n    run: echo a > a.txt\n")

    def queued() -> int:
        count = bytearray(4)
        fcntl.ioctl(r, termios.FIONREAD, count)
        return int.from_bytes(count, "little")

    seen: list[int] = []
    real = recorder.Recorder.finish

    def finish(self: recorder.Recorder) -> bool:
        seen.append(queued())  # (the loop has returned: what follows is storing and sealing)
        return real(self)

    monkeypatch.setattr(recorder.Recorder, "finish", finish)
    monkeypatch.setenv("MAKEFLAGS", f" -j4 --jobserver-auth={r},{w}")
    monkeypatch.chdir(project.root)
    assert main(["-s"]) == 0
    assert seen == [3]
    assert queued() == 3


def test_a_job_server_without_settle_still_runs_a_build(project: Project) -> None:
    """`settle` is optional: a job server written to the older interface
    (docs/architecture.md) is still used."""
    from pivotbuild.build.engine import Engine
    from pivotbuild.build.options import BuildOptions

    class Pool:
        capacity = 2

        def __init__(self) -> None:
            self.free = 2
            self.used = 0

        def try_acquire(self, n: int) -> bool:
            if n > self.free:
                return False
            self.free -= n
            self.used += n
            return True

        def release(self, n: int) -> None:
            self.free += n

        def available(self) -> int:
            return self.free

        def close(self) -> None:
            pass

    class Quiet:
        def handle(self, event: object) -> None:
            pass

        def close(self) -> None:
            pass

    project.pivotfile(
        "stage a:\n    outs: a.txt\n    run: echo a > a.txt\nstage b:\n    outs: b.txt\n    run: echo b > b.txt\n"
    )
    jobs = Pool()
    engine = Engine(Quiet(), jobserver=jobs)
    assert engine.build(BuildOptions(cwd=project.root, jobs=2)) == 0
    assert (project.root / "a.txt").read_text() == "a\n" and jobs.used == 2 and jobs.free == 2


def test_makes_tokens_go_back_before_the_next_stage_is_decided(
    project: Project, pool: Callable[[int], tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under make's pool, a token an ended stage leaves goes back to make
    before the build decides what to start next (a decision may hash large
    files, and make's other jobs may be waiting); only pivotbuild's own pool
    hands it straight to the next start.  (In process, to look at make's
    pipe as each stage is decided.)"""
    from pivotbuild.build import decider
    from pivotbuild.cli import main

    r, w = pool(3)
    project.pivotfile(
        "stage big:\n    outs: a.txt\n    jobs: 3\n    run: echo a > a.txt\n"
        "stage next:\n    deps: a.txt\n    outs: b.txt\n    run: cp a.txt b.txt\n"
    )

    def queued() -> int:
        count = bytearray(4)
        fcntl.ioctl(r, termios.FIONREAD, count)
        return int.from_bytes(count, "little")

    seen: dict[str, int] = {}
    real = decider.Decider.stage

    def stage(self: decider.Decider, sid: object, *args: object, **kwargs: object) -> object:
        seen[sid.name] = queued()  # type: ignore[attr-defined]
        return real(self, sid, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decider.Decider, "stage", stage)
    monkeypatch.setenv("MAKEFLAGS", f" -j4 --jobserver-auth={r},{w}")
    monkeypatch.chdir(project.root)
    assert main(["-s"]) == 0
    assert seen == {"big": 3, "next": 3}
