"""The worker that runs `py:` stages: one process per build and pipeline,
started with its first Python stage (`python -P -m
pivotbuild.build.executors.pyworker FD`: -P, so that the directory it starts
in is not first on `sys.path`), that forks a child for each stage
(PIVOTFILE.md, "Python stages").

Forking from it, not from pivotbuild, gives each stage an interpreter that
has already started and imported pivotbuild, without the hazards of forking
the build itself (its threads, its open descriptors).  The stage's own
module is imported by each child afresh, so that its top-level code runs in
the stage's directory and environment, and is the code as it is when the
stage starts (its fingerprint, pysource.py, was taken just before).  What the
worker keeps for its children is the project's modules compiled (`_CODE`:
the files the stage's code reaches, compiled after its first stage, each
used only while its file is unchanged), which spares each stage reading and
compiling them.  (Importing them in the worker, as it first did, ran their
top-level code in the worker's directory and environment, once, and let a
stage run code older than its fingerprint: review of issue 16.)
The worker is single-threaded and in a session of its own (Ctrl-C at the
terminal reaches the build, which kills the stages, not the worker).

It talks to the build (pystages.py) over a SOCK_SEQPACKET socket, one
`marshal`led dict per message (marshal is built in: the worker imports as
little as it can, since a module it has imported is the one its stages
get).  A request to run a stage carries its call (module, function, where
to import it from, working directory, environment, context) and, as SCM_RIGHTS, the descriptors of its stdin, stdout and
stderr (and its job pool's: make.md); the answer is `{"started": PID}` as
soon as the child is forked, and `{"exited": PID, "code": N}` once it is
reaped (as Popen's returncode: -N if signal N killed it).  The worker hears
of an exit through a pidfd per child, so that it needs no SIGCHLD handler
its children would inherit.  End of file on the socket (the build is over,
or pivotbuild died) ends the worker, which first kills the process groups of
any children still running (the build's lifeline does this for shell
stages: lifeline.py).

`python -P -m pivotbuild.build.executors.pyworker --once FILE` runs one call
in that process instead, unforked (`once`: a Dask worker's way, dasktask.py),
through the same code as a forked child (`_call`).

The child does as little as it can, since every object it touches costs a
page copied (measured: about 300 pages, 1 ms of CPU, for a trivial stage; the
fork itself, 0.6 ms): a session of its own (the build kills its whole
group), the stage's standard streams and job pool (every other descriptor
closed), directory and environment (only what differs from the worker's),
its pipeline directory then the project root first on `sys.path`; then it
imports the module, calls the function with the context, and exits as
Python would (its threads joined, its atexit functions run): 0 when it
returns, 1 with the traceback on stderr when it raises (SystemExit keeps its
code).
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.machinery
import marshal
import os
import select
import signal
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAX_MESSAGE = 1 << 20  # a request (the environment is most of it)


class Context:
    """What a `py:` function is called with: its stage, read-only (`ctx.deps`
    and `ctx.outs` are tuples; `ctx.params` and `ctx.matrix` plain dicts of
    the child's own, whose changes reach nothing)."""

    __slots__ = ("deps", "matrix", "name", "outs", "params")

    def __init__(self, name: str, deps: list[str], outs: list[str], params: dict[str, Any], matrix: dict[str, str]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "deps", tuple(deps))
        object.__setattr__(self, "outs", tuple(outs))
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "matrix", matrix)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"the stage's context is read-only (ctx.{name})")

    def __repr__(self) -> str:
        return f"Context(name={self.name!r}, deps={self.deps!r}, outs={self.outs!r})"  # type: ignore[attr-defined]


def main(fd: int) -> None:
    for stream in (sys.stdout, sys.stderr):  # (set once here: each child's streams are the stage's pipes)
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sock = socket.socket(fileno=fd)
    _cached_imports()
    children: dict[int, int] = {}  # pidfd (or -pid without one) -> pid
    try:  # noqa: SIM105 - (contextlib: one import fewer for the worker)
        _serve_all(sock, children)
    except OSError:
        pass  # (the build's end reset: pivotbuild died with messages unread)
    _bury(children)  # the build is over (or pivotbuild died: then stages may still run)


def _serve_all(sock: socket.socket, children: dict[int, int]) -> None:
    """Fork what the build asks for and tell it of exits, until it goes."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        waiting = any(k < 0 for k in children)  # (a child with no pidfd: its exit is asked for each tick)
        for key, _ in poller.poll(20 if waiting else None):
            if key == sock.fileno():
                if not _serve(sock, poller, children):
                    return
            elif (pid := children.get(key)) is not None:
                _reaped(sock, pid, os.waitpid(pid, 0)[1])
                poller.unregister(key)
                os.close(key)
                del children[key]
        for key in [k for k in children if k < 0]:
            pid = children[key]
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                _reaped(sock, pid, status)
                del children[key]


def _serve(sock: socket.socket, poller: select.poll, children: dict[int, int]) -> bool:
    """Fork the child a request asks for; False once the build has gone."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 8)
    except InterruptedError:
        return True
    if not data:
        return False
    request = marshal.loads(data)
    pid = os.fork()
    if pid == 0:
        _child(request, fds)  # never returns
    for f in fds:
        os.close(f)
    sock.send(marshal.dumps({"started": pid}))
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # (no pidfd here: its exit is asked for)
        children[-pid] = pid
    else:
        children[pidfd] = pid
        poller.register(pidfd, select.POLLIN)
    for path in request["code"]:
        _compiled(path)  # (for the next children: this one compiles what it imports itself)
    return True


# Compiled project modules, by (path, mtime_ns, size, inode): what the worker
# compiled for its children, and each child for itself.  A module is still
# imported, its top-level code run, by each stage afresh; only reading and
# compiling its source is spared (most of an import's cost: without a
# writable __pycache__, all of it).
_CODE: dict[tuple[str, int, int, int], Any] = {}


def _compiled(path: str) -> None:
    """Compile the Python file `path` as it is now, once per version (in the worker)."""
    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, st.st_ino)
        if key in _CODE:
            return
        with open(path, "rb") as f:
            source = f.read()
        if os.stat(path).st_mtime_ns == st.st_mtime_ns:  # (else changed as it was read: left to the child)
            _CODE[key] = compile(source, path, "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError):
        pass  # (the child's own import says what is wrong)


def _cached(path: str) -> Any:
    """The code the worker compiled of `path`, if the file is still that version."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _CODE.get((path, st.st_mtime_ns, st.st_size, st.st_ino))


class _CachedSourceLoader(importlib.machinery.SourceFileLoader):
    """Python's loader of .py files, with a project file's code compiled
    already when the file is as the worker compiled it (any other file:
    Python's own way, its __pycache__ included)."""

    def get_code(self, fullname: str) -> Any:
        code = _cached(self.get_filename(fullname)) if _CODE else None
        return code if code is not None else super().get_code(fullname)


def _cached_imports() -> None:
    """.py files found on sys.path load through `_CachedSourceLoader`."""
    machinery = importlib.machinery
    details = (
        (machinery.ExtensionFileLoader, machinery.EXTENSION_SUFFIXES),
        (_CachedSourceLoader, machinery.SOURCE_SUFFIXES),
        (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES),
    )
    sys.path_hooks.insert(0, machinery.FileFinder.path_hook(*details))
    sys.path_importer_cache.clear()


def _reaped(sock: socket.socket, pid: int, status: int) -> None:
    sock.send(marshal.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}))


def _bury(children: dict[int, int]) -> None:
    """Kill the process groups of the children still running, as the build's
    lifeline would (lifeline.py): SIGTERM, two seconds' grace, SIGKILL."""
    import time

    running = set(children.values())
    for pid in running:
        _killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while running and time.monotonic() < deadline:
        for pid in list(running):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            except ChildProcessError:
                pass
            running.discard(pid)
        time.sleep(0.02)
    for pid in running:
        _killpg(pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    try:  # noqa: SIM105 - (contextlib: one import fewer for the worker)
        os.killpg(pgid, sig)
    except OSError:
        pass  # (gone already)


def _on_path(directories: list[str]) -> None:
    """`directories` first on sys.path, in order (the pipeline's, then the project root)."""
    if sys.path[: len(directories)] != directories:
        sys.path[:] = [*directories, *(d for d in sys.path if d not in directories)]


def _child(request: Mapping[str, Any], fds: list[int]) -> None:
    """In the forked child: become the stage, run it, exit as Python would
    (its other threads joined, its atexit functions run, its streams flushed)."""
    code = 1
    try:
        os.setsid()
        _place(fds, request["fds"])
        os.chdir(request["cwd"])
        _environ(request["env"])
        code = _call(request)
    except BaseException as exc:
        _traceback(exc)
    finally:
        _exit(code)


def once(path: str) -> None:
    """`--once FILE`: run the one call the marshalled request in FILE asks for
    (its module, function, path and context; no descriptors: this process's
    are the stage's, its directory and environment too) and exit as a forked
    child would.  A Dask worker runs `py:` stages so (dasktask.py)."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    code = 1
    try:
        with open(path, "rb") as f:
            request = marshal.load(f)
        code = _call(request)
    except BaseException as exc:
        _traceback(exc)
    finally:
        _exit(code)


def _call(request: Mapping[str, Any]) -> int:
    """Import the stage's module from its path, call its function with its
    context, and finish as Python would: the exit code (0 when it returns,
    1 with the traceback on stderr when it raises, SystemExit's own)."""
    try:
        _on_path(request["path"])
        ctx = request["ctx"]
        context = Context(ctx["name"], ctx["deps"], ctx["outs"], ctx["params"], ctx["matrix"])
        _function(request["module"], request["function"])(context)
        _finish()
        return 0
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException as exc:
        if isinstance(exc, ImportError) and "host" in request:  # (on a Dask worker: say which, and what to do)
            host = request["host"]
            exc.add_note(f"pivotbuild: on the Dask worker {host}: install the packages the stage imports there")
        _traceback(exc)
        return 1


def _exit(code: int) -> None:
    """Flush the stage's streams and exit with `code`, at once."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - (contextlib: one import fewer for the worker)
            stream.flush()
        except BaseException:
            pass  # (a stream the stage closed: nothing to flush)
    os._exit(code)


def _finish() -> None:
    """What Python does before it exits: wait for the threads the function
    left running (not daemons), then run the atexit functions it registered."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()


def _exit_code(exc: SystemExit) -> int:
    """The status `sys.exit(...)` asks for (a message: printed, and 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def _traceback(exc: BaseException) -> None:
    """The stage's traceback, from its own code on: not the worker's frames
    that called it, nor importlib's when its module fails to import."""
    import traceback

    tb = exc.__traceback__
    ours = (__file__, importlib.__file__)  # (import_module is importlib/__init__.py's)
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in ours or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


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
    else:
        high = max([*received, *targets]) + 1
        moved = [fcntl.fcntl(f, fcntl.F_DUPFD, high) for f in received]
        for f in received:
            os.close(f)
        for f, target in zip(moved, targets, strict=True):
            os.dup2(f, target)  # (inheritable: the stage's own children get them, as a shell stage's do)
            os.close(f)
    low = 3  # the worker's own descriptors (its socket, its other children's pidfds) go: close_range(2)
    for keep in sorted(t for t in targets if t > 2):
        os.closerange(low, keep)
        low = keep + 1
    os.closerange(low, _MAX_FD)


_MAX_FD = 1 << 20  # (above any RLIMIT_NOFILE's default; closerange is one close_range call on Linux 5.9+)


def _function(module: str, name: str) -> Any:
    loaded = importlib.import_module(module)
    try:
        return getattr(loaded, name)
    except AttributeError:
        raise SystemExit(f"pivotbuild: py: module '{module}' has no function '{name}'") from None


if __name__ == "__main__":
    if sys.argv[1] == "--once":
        once(sys.argv[2])
    else:
        main(int(sys.argv[1]))
