"""What runs in a `py:` stage's runner (pyworker.py forks it): its stages,
one after another, each in its directory, environment and descriptors, and
the check that a stage left nothing behind that the next would see.

`run` runs the runner's first stage, then, for as long as each stage
returns and leaves its process as it was when its function was called
(`_kept`, `_state`: threads, atexit functions, the standard streams, signal
dispositions, timers, the umask...), the next ones the worker hands over on
its socket; else it ends as Python ends (its other threads joined, its
atexit functions run, its streams flushed).  A runner's first stage closes
every descriptor the worker had (`_place`); the next ones close none but
their own, as the module's files and sockets are the module's.  `once` runs
one call, unforked (a Dask worker's way: dasktask.py), through the same
`_call`.

Everything here runs in the stage's process, where every object touched
costs a page copied from the worker (a fork's cost): it does as little as
it can, and imports little (a module imported here is the one the stage
gets).
"""

from __future__ import annotations

import fcntl
import importlib
import marshal
import os
import signal
import socket
import stat
import sys

from pivotbuild.environ import become

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


def _on_path(directories: list[str]) -> None:
    """`directories` first on sys.path, in order (the pipeline's, then the project root)."""
    if sys.path[: len(directories)] != directories:
        sys.path[:] = [*directories, *(d for d in sys.path if d not in directories)]


def run(request: dict[str, Any], fds: list[int], sock: socket.socket) -> None:
    """In a forked runner: run the stage of `request` (its descriptors `fds`),
    then, for as long as each stage returns and leaves nothing behind, the
    next ones the worker hands over on `sock`; else end as Python would (its
    other threads joined, its atexit functions run, its streams flushed)."""
    me = os.getpid()
    code: int | None = 1
    try:
        os.setsid()
        start = (list(sys.path), list(sys.argv))
        channel = os.fstat(sock.fileno()).st_ino
        sock = _place(fds, request["fds"], sock)
        while True:
            pool = request["fds"][3:]
            placed = _identities(pool)
            code = _stage(request, start)
            if code is not None or os.getpid() != me or not _ours(sock, channel) or _identities(pool) != placed:
                break  # (`me`: a stage's fork returning through here)
            _release(pool)
            try:
                sock.send(b"ok")
                data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, 8)
            except OSError:
                data = b""
            if not data:  # (not wanted any more, or the build is over)
                _let_go()
                _exit(0)
            request = marshal.loads(data)
            if flags & socket.MSG_CTRUNC or len(fds) != len(request["fds"]):
                _short(fds)
            _placed_again(request, fds)
        if code is None:
            _finish()
            code = 0
    except BaseException as exc:
        _traceback(exc)
    finally:
        _exit(code if code is not None else 1)


def _stage(request: Mapping[str, Any], start: tuple[list[str], list[str]]) -> int | None:
    """Run one stage in this runner, in its directory and environment, with
    `sys.path` and `sys.argv` as the runner started: None when its function
    returned and left nothing behind, else its exit code (see `_call`)."""
    try:
        os.chdir(request["cwd"])
        become(request["env"])
        sys.path[:], sys.argv[:] = start
        return _call(request, reuse=True)
    except BaseException as exc:
        _traceback(exc)
        return 1


def _state() -> tuple[Any, ...]:
    """What of its process a stage could leave behind for the next one:
    threads, atexit functions, weakref finalizers pending (a temporary
    directory not cleaned up), the standard streams, signal dispositions
    (the kernel's, and Python's handlers of those caught), the signal mask,
    interval timers (`signal.alarm`), the umask, the recursion limit,
    warnings' filters."""
    import atexit

    threading = sys.modules.get("threading")
    weakref = sys.modules.get("weakref")
    mask = os.umask(0o022)
    os.umask(mask)
    warnings = sys.modules.get("warnings")
    masks = _signal_masks()
    if masks is None:  # (no /proc: every signal asked)
        handlers = tuple(map(signal.getsignal, _VALID))
    else:
        caught = masks[2]
        handlers = tuple(signal.getsignal(sig) for sig in range(1, caught.bit_length() + 1) if caught >> (sig - 1) & 1)
    return (
        1 if threading is None else threading.active_count(),
        atexit._ncallbacks(),
        _finalizers(weakref),
        sys.stdin,
        sys.stdout,
        sys.stderr,
        masks,
        handlers,
        tuple(map(signal.getitimer, _TIMERS)),
        mask,
        sys.getrecursionlimit(),
        None if warnings is None else tuple(warnings.filters),
    )


def _finalizers(weakref: Any) -> frozenset[Any]:
    """The weakref finalizers pending that would run at exit (a temporary
    directory not yet cleaned up)."""
    if weakref is None:
        return frozenset()
    return frozenset(f for f, info in weakref.finalize._registry.items() if info.atexit)


_TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
_VALID = tuple(signal.valid_signals())  # (not the C library's own: glibc catches 33 once a thread has started)
_VALID_MASK = sum(1 << (sig - 1) for sig in _VALID)


def _signal_masks() -> tuple[int, ...] | None:
    """The process's blocked, ignored and caught signals, as the kernel has
    them, of those a program may use (one read: asking Python for each
    signal's handler costs more)."""
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY)
    except OSError:
        return None
    try:
        status = os.read(fd, 8192)
    finally:
        os.close(fd)
    at = status.find(b"SigBlk:")
    if at < 0:
        return None
    lines = status[at:].split(b"\n", 3)[:3]  # SigBlk, SigIgn, SigCgt
    return tuple(int(line.partition(b"\t")[2], 16) & _VALID_MASK for line in lines)


# The state of the runner when its last stage returned having left nothing
# behind: the next stage's, unless that one's import runs more top-level code.
_LAST: list[tuple[Any, ...]] = []


def _kept(before: tuple[Any, ...]) -> bool:
    """Whether the stage left its process as `before` (then noted as `_LAST`):
    also none of its standard streams closed, no child of its left running."""
    now = _state()
    # (finalizers: none added; one the stage ran or let go of, as a temporary directory made at import, is fine)
    if now[:2] + now[3:] != before[:2] + before[3:] or not now[2] <= before[2]:
        return False
    if any(stream.closed for stream in now[3:6]):
        return False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            return False  # (a child still running)
    _LAST[:] = [now]
    return True


def _ours(sock: socket.socket, channel: int) -> bool:
    """Whether the runner's socket is still its own (a stage may close every
    descriptor, and its next file may take the number)."""
    try:
        st = os.fstat(sock.fileno())
    except OSError:
        return False
    return st.st_ino == channel and stat.S_ISSOCK(st.st_mode)


def _identities(fds: list[int]) -> list[tuple[int, int, int]]:
    """Each descriptor with what it is open on (device, inode), or -1s if closed."""
    found = []
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            found.append((fd, -1, -1))
        else:
            found.append((fd, st.st_dev, st.st_ino))
    return found


def _release(pool: list[int]) -> None:
    """The stage's descriptors closed (its standard streams made /dev/null, its
    job pool's closed, still as placed: `run` checked): the build sees end
    of file on its output."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    for fd in pool:
        os.close(fd)


def once(path: str) -> None:
    """`--once FILE`: run the one call the marshalled request in FILE asks for
    (its module, function, path and context; no descriptors: this process's
    are the stage's, its directory and environment too) and exit as a forked
    child would.  A Dask worker runs `py:` stages so (dasktask.py)."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    code: int | None = 1
    try:
        with open(path, "rb") as f:
            request = marshal.load(f)
        code = _call(request)
    except BaseException as exc:
        _traceback(exc)
    finally:
        _exit(code or 0)  # (None only from a call not finished)


def _call(request: Mapping[str, Any], *, reuse: bool = False) -> int | None:
    """Import the stage's module from its path, call its function with its
    context, and finish as Python would: the exit code (0 when it returns,
    1 with the traceback on stderr when it raises, SystemExit's own).  With
    `reuse` (a runner's), a function that returned and left nothing behind
    (`_kept`) gives None, unfinished: the runner takes the next stage."""
    try:
        _on_path(request["path"])
        ctx = request["ctx"]
        context = Context(ctx["name"], ctx["deps"], ctx["outs"], ctx["params"], ctx["matrix"])
        imports = request["module"] not in sys.modules
        function = _function(request["module"], request["function"])
        before = None if not reuse else _LAST[0] if _LAST and not imports else _state()
        function(context)
        if before is not None and _kept(before):
            return None
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


def _let_go() -> None:
    """A runner not wanted any more ends: the atexit functions its module
    registered run, as they would at a process's end; the threads its module
    started are not waited for (a process whose thread never ends would not
    end, and no stage waits for this one)."""
    import atexit

    atexit._run_exitfuncs()


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


_WORKER = os.path.join(os.path.dirname(__file__), "pyworker.py")


def _traceback(exc: BaseException) -> None:
    """The stage's traceback, from its own code on: not the worker's frames
    that called it, nor importlib's when its module fails to import."""
    import traceback

    tb = exc.__traceback__
    ours = (__file__, _WORKER, importlib.__file__)  # (import_module is importlib/__init__.py's)
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in ours or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")
    ):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _place(received: list[int], targets: list[int], sock: socket.socket) -> socket.socket:
    """A new runner's first stage: each received descriptor at the number the
    stage expects (0, 1, 2, then its job pool's, as its MAKEFLAGS names
    them), by way of numbers above them all, so that none is overwritten
    before it is placed; every other descriptor closed (the worker's), but
    the runner's socket to the worker (returned: moved first if its number
    is one the stage expects)."""
    if sock.fileno() in targets:
        moved_sock = socket.socket(fileno=fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, max(targets) + 1))
        sock.detach()  # (its number is about to be the stage's)
        sock = moved_sock
    if len(received) == 3 and min(received) > 2:  # (no job pool: the three standard streams, each free to take)
        for target, f in enumerate(received):
            os.dup2(f, target)
            os.close(f)
    else:
        high = max([*received, *targets]) + 1
        moved = [fcntl.fcntl(f, fcntl.F_DUPFD, high) for f in received]
        for f in received:
            os.close(f)
        for f, target in zip(moved, targets, strict=True):
            os.dup2(f, target)  # (inheritable: the stage's own children get them, as a shell stage's do)
            os.close(f)
    low = 3  # the worker's own descriptors (its socket, its other children's pidfds) go: close_range(2)
    for keep in sorted({*(t for t in targets if t > 2), sock.fileno()}):
        os.closerange(low, keep)
        low = keep + 1
    os.closerange(low, _MAX_FD)
    return sock


def _placed_again(request: dict[str, Any], received: list[int]) -> None:
    """A reused runner's next stage: its standard streams at 0, 1 and 2, and
    its job pool where it was received, at numbers free in this runner
    (whatever its module holds: no other descriptor is closed), its
    MAKEFLAGS made to name them."""
    for target, f in enumerate(received[:3]):
        os.dup2(f, target)
        os.close(f)
    pool, named = received[3:], request["fds"][3:]
    for f in pool:
        os.set_inheritable(f, True)  # (the stage's own children get them, as a shell stage's do)
    request["fds"] = [0, 1, 2, *pool]
    env = request["env"]
    if len(pool) == 2 and "MAKEFLAGS" in env:  # (a pool is its read end and its write end)
        env["MAKEFLAGS"] = _renamed(env["MAKEFLAGS"], named, pool)


def _renamed(makeflags: str, old: list[int], new: list[int]) -> str:
    """`makeflags` naming the job pool's descriptors `new` where it named `old`
    (in its flags: after `--` come make's variables, left as they are)."""
    was, now = f"{old[0]},{old[1]}", f"{new[0]},{new[1]}"
    words = makeflags.split(" ")
    for i, word in enumerate(words):
        if word == "--":
            break
        if word in (f"--jobserver-fds={was}", f"--jobserver-auth={was}"):
            words[i] = word.replace(was, now)
    return " ".join(words)


def _short(received: list[int]) -> None:
    """Not every descriptor of the stage reached this runner (it holds as many
    as its limit allows): the stage fails, saying why on its stderr if that
    came, and the runner ends."""
    if len(received) >= 3:
        os.write(
            received[2],
            b"pivotbuild: this py: stage's process could not take its descriptors (its module holds"
            b" nearly as many as RLIMIT_NOFILE allows): raise the limit, or hold fewer\n",
        )
    for f in received:
        os.close(f)
    _exit(1)


_MAX_FD = 1 << 20  # (above any RLIMIT_NOFILE's default; closerange is one close_range call on Linux 5.9+)


def _function(module: str, name: str) -> Any:
    loaded = importlib.import_module(module)
    try:
        return getattr(loaded, name)
    except AttributeError:
        raise SystemExit(f"pivotbuild: py: module '{module}' has no function '{name}'") from None
