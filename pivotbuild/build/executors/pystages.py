"""The build's side of `py:` stages: the call a stage makes (`PyCall`, part of
its RunSpec), and the worker whose runners run them (pyworker.py).

To the local executor a Python stage is a process like any other: it has a
pid and a process group (its runner's: the build kills the group on timeout
or Ctrl-C, and the worker does if pivotbuild dies), and its stdout and
stderr are pipes the build reads line by line.  Its pid and exit status come
another way: the worker sends the runner's pid once the stage is handed
over (the build does not wait for it: the pid is read when first needed) and
its code once the stage has ended (`PyChild.poll`, `wait`); a descriptor the
worker closes after that (`PyChild.exit_fd`) stands for a pidfd, since a
runner goes on to its next stage without exiting.  For the same reason the
build never signals a runner's group for a stage whose end it has read
(runner.Process), and tells the worker, with each request, which runners'
ends it has not read yet (as the number of its messages it has read): those
take no new stage, nor does one the build has signalled (`retire`).
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import socket
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pivotbuild.structs import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pivotbuild.model import Stage


@struct(frozen=True, slots=True)
class PyCall:
    """What a `py:` stage calls: `module:function`, importable from
    `pipeline_dir` (else from the project root, as pysource.py looks for
    it), with the context pyrunner.Context makes of `ctx`."""

    module: str
    function: str
    pipeline_dir: str
    root: str
    ctx: Mapping[str, Any]
    code: tuple[str, ...] = ()  # the project's Python files its code reaches (pysource.py), for the worker to compile


def py_call(stage: Stage, root: Path, expanded_deps: tuple[str, ...]) -> PyCall:
    """The call `stage` (a `py:` stage) makes, with its deps as the build expanded them."""
    assert stage.py is not None
    module, _, function = stage.py.partition(":")
    params: dict[str, Any] = {}
    for p in stage.params:
        *parents, last = p.key.split(".")
        at = params
        for part in parents:
            at = at.setdefault(part, {})
        at[last] = json.loads(p.value_json)
    ctx = {
        "name": stage.id.label(""),
        "deps": [stage.relative(d) for d in expanded_deps],
        "outs": [stage.relative(o.path) for o in stage.outs],
        "params": params,
        "matrix": dict(stage.matrix),
    }
    from pivotbuild.pysource import SourceError, fingerprint  # (its answer is kept: the decision asked already)

    try:
        code = fingerprint(stage.py, root / stage.id.pipeline, root).files
    except SourceError:
        code = ()  # (the child's import says what is wrong)
    return PyCall(module, function, str(root / stage.id.pipeline), str(root), ctx, code)


class PyChild:
    """A stage handed to a runner of the worker, as much of a Popen as
    runner.Process uses.  Its pid (the runner's) comes with the worker's
    answer, read when first asked for: the build goes on meanwhile."""

    __slots__ = ("_done", "_pid", "returncode", "worker")

    def __init__(self, worker: PyWorker, done: int) -> None:
        self._pid: int | None = None
        self._done: int | None = done  # readable (end of file) once the worker has told its exit code
        self.worker = worker
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        while self._pid is None:
            self.worker.pump(block=True)
        return self._pid

    def poll(self) -> int | None:
        if self.returncode is None:
            self.worker.pump(block=False)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self.worker.pump(block=True)
        return self.returncode

    def exit_fd(self) -> int:
        """A descriptor, now the caller's to close, that polls readable once
        its exit code can be read: its pid is a runner's, which goes on to
        the next stage and never exits for this one (a pidfd would not do)."""
        done, self._done = self._done, None
        return done if done is not None else os.open(os.devnull, os.O_RDONLY)

    def retire(self) -> None:
        """See PyWorker.retire: called before its group is signalled."""
        self.worker.retire(self.pid)

    def _told(self, code: int) -> None:
        self.returncode = code
        if self._done is not None:
            os.close(self._done)
            self._done = None


# The pid of a child whose worker died before it was forked: above any pid_max
# (2**22 on Linux), so that it names no process (a kill finds none).
_NO_PID = 1 << 30


class PyWorker:
    """The build's worker (pyworker.py), started with its first `py:` stage."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._process: Any = None
        self._children: dict[int, PyChild] = {}
        self._forking: deque[PyChild] = deque()  # asked for, pid not yet heard (in the order asked)
        self._read = 0  # messages read from the worker

    def starter(self, call: PyCall) -> _Bound:
        """A starter (spawn.Starter's `start`) that runs `call`."""
        return _Bound(self, call)

    def start(
        self,
        call: PyCall,
        cwd: Path | None,
        env: Mapping[str, str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        pass_fds: tuple[int, ...] = (),
    ) -> PyChild:
        """Ask the worker to run `call` in a runner (its pid follows); raises
        OSError if the worker is gone."""
        self.pump(block=False)  # (the ends it has told: their runners may take this stage; or it died)
        sock = self._open()
        request = {
            "module": call.module,
            "function": call.function,
            "path": list(dict.fromkeys([call.pipeline_dir, call.root])),
            "cwd": str(cwd or os.getcwd()),
            "env": dict(env),
            "ctx": call.ctx,
            "fds": [0, 1, 2, *pass_fds],
            "code": list(call.code),
            # How many of the worker's messages the build has read: a runner whose last stage's
            # end was not among them is not for this stage, as the build may still signal its
            # group for that one (runner.Process._group_is_its_own)
            "seen": self._read,
        }
        done, told = os.pipe()  # (the worker closes `told` once it has sent the stage's exit code)
        try:
            socket.send_fds(sock, [marshal.dumps(request)], [stdin, stdout, stderr, *pass_fds, told])
        except OSError as exc:
            os.close(done)
            raise OSError(exc.errno, f"the Python stage worker is gone ({exc.strerror})") from None
        finally:
            os.close(told)
        child = PyChild(self, done)
        self._forking.append(child)
        return child

    def retire(self, pid: int) -> None:
        """The build is about to signal runner `pid`'s group for its stage: it
        takes no other (it may outlive the signal, and the build may signal
        that group again)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):  # (the worker is gone: so is the runner)
                self._sock.send(marshal.dumps({"retire": pid}))

    def pump(self, *, block: bool) -> None:
        """Read what the worker has said (at least one message with `block`)."""
        while self._receive(block=block) is not None:
            block = False

    def let_go(self) -> None:
        """Tell the worker the build is over (end of file: it ends)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Let the worker go and reap it."""
        self.let_go()
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except Exception:
                with contextlib.suppress(OSError):
                    self._process.kill()
                    self._process.wait()
            self._process = None

    def _open(self) -> socket.socket:
        if self._sock is None:
            import subprocess

            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._process = subprocess.Popen(
                    # -P: not the directory it starts in first on sys.path (a project's json.py is not its json)
                    [sys.executable, "-P", "-m", "pivotbuild.build.executors.pyworker", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # (Ctrl-C at the terminal is the build's to handle)
                )
            finally:
                theirs.close()
            self._sock = ours
        return self._sock

    def _receive(self, *, block: bool) -> dict[str, Any] | None:
        """One message from the worker (None: none yet, or the worker is gone),
        noted on its child: its pid, or its exit code."""
        if self._sock is None:
            return None
        try:
            data = self._sock.recv(65536, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            self._orphan()
            return None
        self._read += 1
        message: dict[str, Any] = marshal.loads(data)
        if "started" in message:
            child = self._forking.popleft()
            child._pid = message["started"]
            self._children[child._pid] = child
        elif "exited" in message:
            gone = self._children.pop(message["exited"], None)
            if gone is not None:
                gone._told(message["code"])
        return message

    def _orphan(self) -> None:
        """The worker died: its runners' codes will never come (it killed
        them as it went, or the build kills their groups).  The next stage
        starts another, whose messages are counted afresh."""
        for child in (*self._children.values(), *self._forking):
            if child._pid is None:
                child._pid = _NO_PID
            child._told(-9)
        self._children.clear()
        self._forking.clear()
        self._read = 0
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            with contextlib.suppress(Exception):  # (reaped now, not at the build's end)
                self._process.wait(timeout=5)
            self._process = None


class _Bound:
    """A starter for one call (runner.Process starts what its starter starts)."""

    def __init__(self, worker: PyWorker, call: PyCall) -> None:
        self.worker = worker
        self.call = call

    def start(
        self,
        argv: tuple[str, ...],
        cwd: Path | None,
        env: Mapping[str, str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        pass_fds: tuple[int, ...] = (),
    ) -> PyChild:
        return self.worker.start(self.call, cwd, env, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=pass_fds)
