"""The worker that runs `py:` stages: one process per build, started with
the first Python stage (`python -m pivotbuild.build.executors.pyworker FD`),
that forks a child for each stage (PIVOTFILE.md, "Python stages").

Forking from it, not from pivotbuild, gives each stage an interpreter that
has already started and imported pivotbuild (and, after its first stage,
the stage's module and everything that imports: numpy, pandas...), without
the hazards of forking the build itself (its threads, its open descriptors).
The worker is single-threaded and in a session of its own (Ctrl-C at the
terminal reaches the build, which kills the stages, not the worker).

It talks to the build (pystages.py) over a SOCK_SEQPACKET socket, one JSON
object per message.  A request to run a stage carries its call (module,
function, where to import it from, working directory, environment, context) and,
as SCM_RIGHTS, the descriptors of its stdin, stdout and stderr; the answer is
`{"started": PID}` as soon as the child is forked, and `{"exited": PID,
"code": N}` once it is reaped (as Popen's returncode: -N if signal N killed it).
End of file on the socket (the build is over, or pivotbuild died) ends the
worker; the children are the build's to kill (it holds their process groups).

The child: a session of its own (the build kills its whole group), the
stage's directory, environment and standard streams, its pipeline directory
(then the project root) first on `sys.path`; then it imports the module, calls the function with the
context, and exits 0 when it returns, 1 with the traceback on stderr when it
raises (SystemExit keeps its code).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Mapping
from typing import Any

MAX_MESSAGE = 1 << 20  # a request (the environment is most of it)


class Context:
    """What a `py:` function is called with: read-only views of its stage."""

    __slots__ = ("deps", "matrix", "name", "outs", "params")

    def __init__(self, name: str, deps: list[str], outs: list[str], params: dict[str, Any], matrix: dict[str, str]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "deps", tuple(deps))
        object.__setattr__(self, "outs", tuple(outs))
        object.__setattr__(self, "params", _frozen(params))
        object.__setattr__(self, "matrix", _frozen(matrix))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"the stage's context is read-only (ctx.{name})")

    def __repr__(self) -> str:
        return f"Context(name={self.name!r}, deps={self.deps!r}, outs={self.outs!r})"  # type: ignore[attr-defined]


def _frozen(value: Any) -> Any:
    """`value` with its dicts read-only (and lists as tuples)."""
    from types import MappingProxyType

    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def main(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the build stops its stages itself)
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # (a handler, so that the wakeup fd hears of it)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    children: set[int] = set()
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                os.read(wake_r, 512)
                _reap(sock, children)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 8)
            except InterruptedError:
                continue
            if not data:
                return  # the build is over
            request = json.loads(data)
            pid = os.fork()
            if pid == 0:
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                _child(request, fds)  # never returns
            children.add(pid)
            for f in fds:
                os.close(f)
            sock.send(json.dumps({"started": pid}).encode())
            _preload(request)
        _reap(sock, children)


def _reap(sock: socket.socket, children: set[int]) -> None:
    """Tell the build of every child that has exited."""
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            children.discard(pid)
            sock.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())


def _preload(request: Mapping[str, Any]) -> None:
    """Import the stage's module here too, once, so that the next stage's
    child has it (and what it imports) already; quietly: the child reported
    whatever the import had to say."""
    name = request["module"]
    if name in sys.modules:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        _on_path(request["path"])
        importlib.import_module(name)
    except BaseException:
        sys.modules.pop(name, None)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, null):
            os.close(f)


def _on_path(directories: list[str]) -> None:
    """`directories` first on sys.path, in order (the pipeline's, then the project root)."""
    if sys.path[: len(directories)] != directories:
        sys.path[:] = [*directories, *(d for d in sys.path if d not in directories)]


def _child(request: Mapping[str, Any], fds: list[int]) -> None:
    """In the forked child: become the stage, run it, exit."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _place(fds, request["fds"])
        os.chdir(request["cwd"])
        _environ(request["env"])
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        _on_path(request["path"])
        function = _function(request["module"], request["function"])
        ctx = request["ctx"]
        function(Context(ctx["name"], ctx["deps"], ctx["outs"], ctx["params"], ctx["matrix"]))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next  # (from the stage's own code on: not the worker's frames that called it)
        traceback.print_exception(type(exc), exc, tb)
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):  # (a stream the stage closed: nothing to flush)
                stream.flush()
        os._exit(code)


def _environ(env: Mapping[str, str]) -> None:
    """os.environ made `env`, touching only what differs (a forked child's
    every write to an object it shares copies a page: most of the
    environment is the worker's already, inherited from the build)."""
    environ = os.environ
    for key in [k for k in environ if k not in env]:
        del environ[key]
    for key, value in env.items():
        if environ.get(key) != value:
            environ[key] = value


def _place(received: list[int], targets: list[int]) -> None:
    """Each received descriptor at the number the stage expects (0, 1, 2, then
    its job pool's, as its MAKEFLAGS names them), by way of numbers above
    them all, so that none is overwritten before it is placed."""
    if len(received) == 3 and min(received) > 2:  # (no job pool: the three standard streams, each free to take)
        for target, f in enumerate(received):
            os.dup2(f, target)
            os.close(f)
        return
    high = max([*received, *targets]) + 1
    moved = [fcntl.fcntl(f, fcntl.F_DUPFD, high) for f in received]
    for f in received:
        os.close(f)
    for f, target in zip(moved, targets, strict=True):
        os.dup2(f, target)  # (inheritable: the stage's own children get them, as a shell stage's do)
        os.close(f)


def _function(module: str, name: str) -> Any:
    loaded = importlib.import_module(module)
    try:
        return getattr(loaded, name)
    except AttributeError:
        raise SystemExit(f"pivotbuild: py: module '{module}' has no function '{name}'") from None


if __name__ == "__main__":
    main(int(sys.argv[1]))
