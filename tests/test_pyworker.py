"""The worker's choice of a runner for a `py:` stage (pyworker._Pool), with
runners that are sockets only: which idle runner a request may go to, and
one the build has signalled going to none; a new worker's count; and the
MAKEFLAGS a reused runner gives its stage.  End to end: test_pyrunners.py."""

from __future__ import annotations

import marshal
import os
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pivotbuild.build.executors import pyrunner, pystages, pyworker

KEY = ("steps", ("/p",), "/p", (), ())
CTX = {"name": "s", "deps": [], "outs": [], "params": {}, "matrix": {}}


class Pool:
    """A _Pool whose build is `build` (the far end of its socket)."""

    def __init__(self) -> None:
        ours, self.build = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pool = pyworker._Pool(ours)
        self.ends: list[socket.socket] = []

    def runner(self, pid: int, *, key: tuple[object, ...] = KEY, told_at: int = 0) -> socket.socket:
        """An idle runner `pid`; returns its own end of its socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        runner = pyworker._Runner(pid, ours, key, -1)
        runner.done = None
        runner.told_at = told_at
        self.pool.runners[pid] = runner
        self.pool.watched[ours.fileno()] = runner
        self.pool.poller.register(ours, select.POLLIN)
        self.pool.idle.append(runner)
        self.ends.append(theirs)
        return theirs


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool()
    yield p
    for end in (p.build, p.pool.sock, *p.ends, *(r.sock for r in p.pool.runners.values())):
        end.close()


def _pid(runner: pyworker._Runner | None) -> int | None:
    return None if runner is None else runner.pid


def test_the_runner_last_idle_of_the_same_key_takes_the_stage(pool: Pool) -> None:
    pool.runner(11)
    pool.runner(12)
    pool.runner(13, key=("other",))
    assert _pid(pool.pool._take(KEY, 0)) == 12
    assert _pid(pool.pool._take(KEY, 0)) == 11
    assert pool.pool._take(KEY, 0) is None  # (13 runs another module)


def test_a_runner_whose_stage_end_the_build_had_not_read_takes_nothing(pool: Pool) -> None:
    pool.runner(11, told_at=5)
    assert pool.pool._take(KEY, 4) is None  # the build may still signal its group for that stage
    assert _pid(pool.pool._take(KEY, 5)) == 11


def test_an_idle_runner_the_build_signalled_ends(pool: Pool) -> None:
    end = pool.runner(11)
    pool.pool._no_more(11)
    assert pool.pool._take(KEY, 0) is None
    assert end.recv(64) == b""  # its socket's end of file: it exits


def test_a_busy_runner_the_build_signalled_ends_once_its_stage_has_returned(pool: Pool) -> None:
    end = pool.runner(11)
    runner = pool.pool._take(KEY, 0)
    assert runner is not None
    done_r, runner.done = os.pipe()
    pool.pool._no_more(11)  # while it runs its stage
    end.send(b"ok")  # it returned, and left nothing behind
    pool.pool._heard(runner)
    assert marshal.loads(pool.build.recv(1024)) == {"exited": 11, "code": 0}
    assert os.read(done_r, 1) == b""  # closed once told
    os.close(done_r)
    assert pool.pool.idle == [] and end.recv(64) == b""  # not kept: it exits


def _run(worker: pystages.PyWorker, root: Path, function: str) -> int:
    """The exit code of `steps:function` run by `worker` (its output not read)."""
    call = pystages.PyCall("steps", function, str(root), str(root), CTX)
    out_r, out_w = os.pipe()
    with open(os.devnull) as null:
        child = worker.start(call, root, dict(os.environ), stdin=null.fileno(), stdout=out_w, stderr=out_w)
    os.close(out_w)
    code = child.wait()
    os.close(out_r)
    os.close(child.exit_fd())
    return code


def test_a_new_worker_is_told_the_build_has_read_none_of_its_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (else a runner of the new worker whose stage's end the build has not read
    # could take a stage: the count is what keeps it from doing so)
    (tmp_path / "steps.py").write_text(
        "import os, signal\n\ndef ok(ctx):\n    pass\n\ndef die(ctx):\n    os.kill(os.getppid(), signal.SIGKILL)\n"
    )
    sent: list[int] = []
    real = socket.send_fds

    def spy(sock: socket.socket, buffers: list[bytes], fds: list[int], *args: object) -> int:
        sent.append(marshal.loads(buffers[0])["seen"])
        return real(sock, buffers, fds, *args)

    monkeypatch.setattr(socket, "send_fds", spy)
    worker = pystages.PyWorker()
    try:
        codes = [_run(worker, tmp_path, function) for function in ("ok", "ok", "die", "ok")]
    finally:
        worker.close()
    assert codes == [0, 0, -9, 0]
    assert sent == [0, 2, 4, 0], sent  # started and exited of each stage read; the last goes to a new worker


def test_a_stage_after_the_worker_died_idle_gets_a_new_worker(tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text("def ok(ctx):\n    pass\n")
    worker = pystages.PyWorker()
    try:
        codes = []
        for _ in range(2):
            codes.append(_run(worker, tmp_path, "ok"))
            worker._process.kill()  # (between stages: the build has not heard of it yet)
            worker._process.wait()
    finally:
        worker.close()
    assert codes == [0, 0]


@pytest.mark.parametrize(
    ("makeflags", "renamed"),
    [
        (" -j2 --jobserver-auth=fifo:/p --jobserver-fds=9,11", " -j2 --jobserver-auth=fifo:/p --jobserver-fds=23,24"),
        ("k -j3 --jobserver-auth=9,11", "k -j3 --jobserver-auth=23,24"),
        ("k --jobserver-auth=9,11 -- V=--jobserver-fds=9,11", "k --jobserver-auth=23,24 -- V=--jobserver-fds=9,11"),
        (" -j2 --jobserver-fds=9,110", " -j2 --jobserver-fds=9,110"),  # (another pool)
    ],
)
def test_a_reused_runners_makeflags_name_its_job_pool_where_it_is(makeflags: str, renamed: str) -> None:
    assert pyrunner._renamed(makeflags, [9, 11], [23, 24]) == renamed
