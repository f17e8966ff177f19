"""The build server: a resident pivotbuild that runs plain builds for the
`pivotbuild` command (cli/client.py), so that a build does not pay for
Python's start, the imports and reading the project's state again.

    python -m pivotbuild.cli.server     # what `pivotbuild` starts, detached

One server serves one user in one context (client.context: the Python,
pivotbuild, limits, cgroup, environment...), which names its socket; it
listens in the client's private directory, takes one build at a time (a
client that finds it busy builds in its own process), and ends after
PIVOT_SERVER_IDLE seconds without a build (default 600), when its socket is
removed or replaced, when pivotbuild's own files change (it declines that
build first), or when a build leaves a thread or a child process behind.

A request brings the command line, the environment, the umask, and as
descriptors the working directory and the three standard streams: for the
build, the server takes all of them as its own (fchdir, os.environ,
umask, dup2 onto 0, 1 and 2), runs the command line's front door exactly as
`pivotbuild` would (cli/__init__.py), with engines kept between builds
(`Residents`), says the exit status and goes back to /dev/null and `/`.
A signal the client receives becomes SIGINT here, as Ctrl-C would be; a
client that goes away (killed) is an interrupt too.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator

from pivotbuild import environ
from pivotbuild.cli import client
from pivotbuild.cli.residents import Residents
from pivotbuild.state.stamps import Stamp, stamp_now
from pivotbuild.state.stamptable import changed_stamps

IDLE_S = 600.0
_CHECK_S = 30.0  # how often an idle server looks at its socket and its files
_COLLECT_S = 0.05  # how long without a build before the garbage collector runs
_FD_FLOOR = 100  # the server's own descriptors live above the low numbers a build uses


class Server:
    def __init__(self, where: str) -> None:
        self.facts = client.context()  # before anything here changes what it reads
        self.where = where
        self.path = os.path.join(where, client.name(self.facts) + ".sock")
        self.residents = Residents()
        self.requests: queue.Queue[socket.socket] = queue.Queue()
        self.lock = threading.Lock()
        self.busy = False
        self.stopping = False
        self.building: socket.socket | None = None  # the client whose build runs now, and may be interrupted
        self.guard = threading.Lock()  # (a client's watcher signals only the build of its own client)
        self.files = _Files()  # pivotbuild's own, as loaded
        self.listener: socket.socket | None = None
        self.inode = 0

    # -- starting ----------------------------------------------------------------------

    def start(self) -> bool:
        """Listen (False if another server of this context already does)."""
        lock_fd = _high(os.open(self.path[: -len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # (held for this process's life: the lock ends with it)
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, b"%d\n" % os.getpid(), 0)  # (which process serves: for whoever looks)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a name no longer than the socket's own (a socket's path
        # has at most 107 bytes: `client.directory` keeps the socket's within
        # them, and a name with the pid appended could pass them), then moved
        # into place.
        temporary = os.path.join(os.path.dirname(self.path), f".{os.getpid()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            listener.bind(temporary)
            os.chmod(temporary, 0o600)
            listener.listen(16)
            os.replace(temporary, self.path)
            self.inode = os.stat(self.path).st_ino
        except OSError:  # (no server, then: the clients build in their own processes)
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            with contextlib.suppress(OSError):
                os.unlink(self.path[: -len(".sock")] + ".lock")
            return False
        self.listener = _moved_high(listener)
        return True

    def warm(self) -> None:
        """Import what a build with work imports (its first build then imports
        nothing: the executor's modules, and zstd, are imported as a build
        runs its first stage), and note pivotbuild's files."""
        import pivotbuild.build.engine
        import pivotbuild.build.executors.local
        import pivotbuild.build.makejobs
        import pivotbuild.build.sharedpool
        import pivotbuild.cli.direct
        import pivotbuild.cli.fast
        import pivotbuild.cli.names
        import pivotbuild.cli.running
        import pivotbuild.report.plain
        import pivotbuild.state.plan  # noqa: F401
        from pivotbuild.state import framing

        framing.zstd_backend()
        self.files.changed()  # (noted: what is loaded now)

    # -- serving -----------------------------------------------------------------------

    def serve(self) -> None:
        assert self.listener is not None
        threading.Thread(target=self._accept, name="accept", daemon=True).start()
        idle_s = _idle_seconds()
        last = time.monotonic()
        collect = False  # the last builds' seals are still to be written, their cycles collected
        while not self.stopping:
            try:
                conn = self.requests.get(timeout=_COLLECT_S if collect else min(_CHECK_S, idle_s))
            except queue.Empty:
                if collect:
                    # Once no build has come for a moment: the last build's seal
                    # written (the next build through this server reads it from
                    # memory; a build in a process of its own, from the file),
                    # and the cycles of the builds, which ran without the
                    # collector, collected (a full collection takes 8 to 10 ms
                    # after a 1,000-stage project's build, which a build sent
                    # right after would otherwise wait for).
                    self._idle()
                    collect = False
                    continue
                with self.lock:
                    if self.busy:
                        continue
                    if time.monotonic() - last >= idle_s or not self._mine() or self.files.changed():
                        self.stopping = True
                continue
            try:
                self._handle(conn)
            except KeyboardInterrupt:
                pass  # a signal that came as the build ended: nothing of it is left to stop
            except Exception:  # (ours, not the build's: main() says those) this server may not be sound
                self.stopping = True
            finally:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # (its watcher, waiting on it, returns)
                conn.close()
                last = time.monotonic()
                with self.lock:
                    self.busy = False
            # The client has its answer: what its build left for now (the seal),
            # before the next build, which waits in the queue meanwhile.
            try:
                self.residents.after()
            except Exception:  # (ours: as above)
                self.stopping = True
            collect = True
        if collect:
            self._idle()
        with contextlib.suppress(OSError):
            if self._mine():
                os.unlink(self.path)

    def _idle(self) -> None:
        """What waits until no build comes: the seals written, the garbage collected."""
        try:
            self.residents.write_seals()
        except Exception:  # (ours: as in `serve`) this server may not be sound
            self.stopping = True
        gc.collect()

    def _mine(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn = _moved_high(conn)
            with self.lock:
                take = not self.busy and not self.stopping
                if take:
                    self.busy = True
            if take:
                self.requests.put(conn)
            else:
                with contextlib.suppress(OSError):
                    conn.sendall(client.frame({"refused": "busy"}))
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        received = _receive_request(conn)
        if received is None:
            return
        request, fds = received
        # The stats of the next fast check begun now, beside what follows (the
        # request checked, this process made the client's): joined by the end.
        self.residents.look_early()
        try:
            why = self._refusal(conn, request)
            try:
                conn.sendall(client.frame({"refused": why} if why is not None else {"ok": True}))
            except OSError:
                return  # (the client went away: nothing to build for)
            if why is not None:
                return
            argv: list[str] = request["argv"]  # type: ignore[assignment]  # (checked by _refusal)
            watcher = threading.Thread(target=self._watch, args=(conn,), name="client", daemon=True)

            def begin() -> None:
                self.building = conn
                watcher.start()

            with self._as_client(request, fds):
                try:
                    code = _run(argv, self.residents, begin, self._end)
                finally:
                    self._end()  # (again: a Ctrl-C may have cut _run's call short)
            with contextlib.suppress(OSError):  # (a client killed meanwhile: its build was interrupted)
                conn.sendall(client.frame({"exit": code}))
        finally:
            for fd in fds:
                os.close(fd)
            self.residents.end_early()
        if _left_behind():
            self.stopping = True  # (a thread or a child of that build's: a new server starts clean)

    def _refusal(self, conn: socket.socket, request: dict[str, object]) -> str | None:
        """Why this server must not run the build (None: it may)."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            return "another user"
        if request.get("facts") != self.facts:
            return "another context"
        if self.files.changed():
            self.stopping = True
            return "pivotbuild changed"
        from pivotbuild.cli import buildargs

        env, mask, argv = request.get("env"), request.get("umask"), request.get("argv")
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            return "no environment"
        if not isinstance(mask, int) or not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            return "not a request"
        if buildargs.parse(argv) is None:
            return "not a plain build"  # (watch mode, a subcommand, --help: the client runs them)
        return None

    def _watch(self, conn: socket.socket) -> None:
        """Turn the client's signals, or its going away, into Ctrl-C here,
        while its build runs (never another client's build)."""
        while True:
            try:
                message = client.receive(conn)
            except OSError:
                message = None
            with self.guard:
                if self.building is not conn:
                    return
                os.kill(os.getpid(), signal.SIGINT)
            if message is None:
                return

    def _end(self) -> None:
        """The build has ended: its client's signals no longer reach anything."""
        with self.guard:
            self.building = None

    @contextlib.contextmanager
    def _as_client(self, request: dict[str, object], fds: list[int]) -> Iterator[None]:
        """This process as the client is, for one build; the client's
        descriptors `fds` are closed (and the list emptied) as it ends."""
        from pivotbuild import paths

        here, stdin, stdout, stderr = fds
        env = request["env"]
        assert isinstance(env, dict)
        os.fchdir(here)
        environ.become(env)
        mask = request["umask"]
        assert isinstance(mask, int)
        os.umask(mask)
        paths.forget_resolved()  # (symlinks may have changed since the last build)
        sys.argv = ["pivotbuild", *request["argv"]]  # type: ignore[misc]  # (a list of str: checked by _refusal)
        _flush()
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
        _standard_streams()
        try:
            yield
        finally:
            _flush()
            _standard_to_null()
            for fd in fds:  # the client's: a pipe reading its output ends when it does
                os.close(fd)
            fds.clear()
            _standard_streams()
            os.chdir("/")


def _run(argv: list[str], residents: Residents, begin: Callable[[], None], end: Callable[[], None]) -> int:
    """The command line's front door, as `pivotbuild` runs it, with engines
    kept.  Ctrl-C (the client's signals, from `begin` to `end`) raises
    KeyboardInterrupt only while it runs: once it has returned, one that
    comes late changes nothing."""
    from pivotbuild.cli import main

    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (before `begin`: no signal of the client's is lost)
        try:
            begin()
            return main(argv, residents=residents)
        finally:
            end()
            signal.signal(signal.SIGINT, _absorb)
    except KeyboardInterrupt:  # (before the build had its handlers, or as it returned)
        sys.stderr.write("pivotbuild: interrupted\n")
        return 130


def _absorb(signum: int, frame: object) -> None:
    """SIGINT outside a build: nothing to interrupt."""


class _Files:
    """The files of the pivotbuild modules this process imported, with their
    stamps when first seen (a module a build imported later is noted then,
    as the version it loaded)."""

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.stamps: list[Stamp | None] = []
        self._seen: set[str] = set()
        self._marker: tuple[int, str] | None = None  # sys.modules when last looked (`_modules_marker`)

    def changed(self) -> bool:
        """Whether one has changed on disk since it was noted: all statted in
        one pass (stamptable.changed_stamps), where a loop of `os.stat`s took
        0.5 ms a build.  A module of pivotbuild's by its file, not its name:
        the server runs as `__main__`."""
        if self._marker != _modules_marker():  # (only when a module was imported since: look for new ones)
            self._note()
        return bool(changed_stamps(self.names, self.stamps))

    def _note(self) -> None:
        from pivotbuild import __file__ as package

        inside = os.path.join(os.path.dirname(package), "")
        self._marker = _modules_marker()
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if not path or not path.startswith(inside) or path in self._seen:
                continue
            self._seen.add(path)
            self.names.append(os.fsencode(path))
            self.stamps.append(stamp_now(path))


def _modules_marker() -> tuple[int, str]:
    """How many modules are loaded, and the name of the last one (a module
    imported since changes it, even in the place of one removed)."""
    return len(sys.modules), next(reversed(sys.modules))


def _left_behind() -> bool:
    """Whether a build left a thread of its own running, or a child process."""
    from pivotbuild.cache.copying import Held
    from pivotbuild.cache.pages import FLUSHER, THREAD
    from pivotbuild.state.files import Frees

    # (The pages threads, the frees thread and the sends thread live as long as the
    # process: cache/pages.py, state/files.py, cache/copying.py.)
    ours = {"accept", "client", THREAD, FLUSHER, Frees.THREAD, Held.THREAD}
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and thread.name not in ours and thread.is_alive():
            return True
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True if pid == 0 else _left_behind()


def _send_left() -> None:
    """The copies the build that started this server kept and left unsent,
    named by its standard input (client.start_server): their writeback
    begun now, by the thread that sends a build's copies, while the user, or
    the next build, goes on (cache/copying.py, `Left`)."""
    paths = client.named(0)
    if paths:
        from pivotbuild.cache.copying import HELD

        HELD.send(paths)


def _standard_to_null() -> None:
    """0, 1 and 2 on /dev/null (between builds: no client's stream is held)."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _standard_streams() -> None:
    """sys.stdin, stdout and stderr for what 0, 1 and 2 are now, as Python's
    start would make them (a terminal line-buffered, stderr always)."""
    encoding = sys.__stdout__.encoding if sys.__stdout__ is not None else "utf-8"
    errors = sys.__stdout__.errors if sys.__stdout__ is not None else "strict"
    through = bool(getattr(sys.__stdout__, "write_through", False))  # (-u, PYTHONUNBUFFERED)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=encoding, errors=errors)
    out = io.FileIO(1, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(out), encoding=encoding, errors=errors, line_buffering=out.isatty(), write_through=through
    )
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
        encoding=encoding,
        errors="backslashreplace",
        line_buffering=True,
        write_through=through,
    )


def _high(fd: int) -> int:
    """`fd` moved above the numbers a build's own descriptors take (close-on-exec)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FD_FLOOR)
    os.close(fd)
    return moved


def _moved_high(sock: socket.socket) -> socket.socket:
    fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, _FD_FLOOR)
    sock.close()
    return socket.socket(fileno=fd)


def _receive_request(conn: socket.socket) -> tuple[dict[str, object], list[int]] | None:
    """The request and its four descriptors (None: not a request)."""
    fds: list[int] = []
    request = None
    conn.settimeout(10.0)
    try:
        data, ancillary, _flags, _addr = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                count = len(payload) // 4
                fds.extend(_high(fd) for fd in struct.unpack(f"{count}i", payload[: count * 4]))
        if len(data) >= 4:
            size = int.from_bytes(data[:4], "big")
            rest = client.exactly(conn, size - (len(data) - 4)) if size > len(data) - 4 else b""
            request = client.decode(None if rest is None else data[4:] + rest)
    except OSError:
        request = None
    finally:
        conn.settimeout(None)
    if request is None or len(fds) != 4:
        for fd in fds:
            os.close(fd)
        return None
    return request, fds


def _idle_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("PIVOT_SERVER_IDLE", IDLE_S)))
    except ValueError:
        return IDLE_S


def main() -> None:
    where = client.directory()
    if where is None:
        return
    server = Server(where)
    if not server.start():
        return
    os.chdir("/")
    _send_left()
    _standard_to_null()
    signal.signal(signal.SIGINT, _absorb)  # (between builds: a client's late Ctrl-C has nothing to stop)
    gc.disable()  # as `pivotbuild` runs (see cli.run); collected between builds
    server.warm()
    server.serve()
    os._exit(0)


if __name__ == "__main__":
    main()
