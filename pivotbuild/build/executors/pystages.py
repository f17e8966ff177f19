"""The build's side of `py:` stages: the call a stage makes (`PyCall`, part of
its RunSpec), and the worker that forks a child per stage (pyworker.py).

To the local executor a Python stage is a process like any other: it has a
pid and a process group of its own (the build kills the group on timeout or
Ctrl-C, and the lifeline does if pivotbuild dies), its stdout and stderr are
pipes the build reads line by line, and a pidfd says when it has exited.
Only its exit status comes another way: the child is the worker's, so the
worker reaps it and sends its code, which `PyChild.poll` and `wait` read.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
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
    it), with the context pyworker.Context makes of `ctx`."""

    module: str
    function: str
    pipeline_dir: str
    root: str
    ctx: Mapping[str, Any]


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
    return PyCall(module, function, str(root / stage.id.pipeline), str(root), ctx)


class PyChild:
    """A stage's child of the worker, as much of a Popen as runner.Process uses."""

    __slots__ = ("pid", "returncode", "worker")

    def __init__(self, pid: int, worker: PyWorker) -> None:
        self.pid = pid
        self.worker = worker
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.worker.pump(block=False)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self.worker.pump(block=True)
        return self.returncode


class PyWorker:
    """The build's worker (pyworker.py), started with its first `py:` stage."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._process: Any = None
        self._children: dict[int, PyChild] = {}

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
        """Fork the child that runs `call`; raises OSError if the worker is gone."""
        sock = self._open()
        request = {
            "module": call.module,
            "function": call.function,
            "path": list(dict.fromkeys([call.pipeline_dir, call.root])),
            "cwd": str(cwd or os.getcwd()),
            "env": dict(env),
            "ctx": call.ctx,
            "fds": [0, 1, 2, *pass_fds],
        }
        try:
            socket.send_fds(sock, [json.dumps(request).encode()], [stdin, stdout, stderr, *pass_fds])
        except OSError as exc:
            raise OSError(exc.errno, f"the Python stage worker is gone ({exc.strerror})") from None
        while True:
            message = self._receive(block=True)
            if message is None:
                raise OSError(0, "the Python stage worker is gone")
            if "started" in message:
                child = self._children[message["started"]] = PyChild(message["started"], self)
                return child

    def pump(self, *, block: bool) -> None:
        """Read what the worker has said (at least one message with `block`)."""
        while self._receive(block=block) is not None:
            block = False

    def close(self) -> None:
        """Let the worker go (end of file: it exits) and reap it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
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
                    [sys.executable, "-m", "pivotbuild.build.executors.pyworker", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # (Ctrl-C at the terminal is the build's to handle)
                )
            finally:
                theirs.close()
            self._sock = ours
        return self._sock

    def _receive(self, *, block: bool) -> dict[str, Any] | None:
        """One message from the worker (None: none yet, or the worker is gone);
        an exit is noted on its child."""
        if self._sock is None:
            return None
        try:
            data = self._sock.recv(65536, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        if not data:
            self._orphan()
            return None
        message: dict[str, Any] = json.loads(data)
        if "exited" in message:
            child = self._children.pop(message["exited"], None)
            if child is not None:
                child.returncode = message["code"]
        return message

    def _orphan(self) -> None:
        """The worker died: its children's codes will never come (they were killed with it, or will be)."""
        for child in self._children.values():
            child.returncode = -9
        self._children.clear()


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
