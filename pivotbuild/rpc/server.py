"""The agent server's transport: a Unix socket, one thread per client.

Each client gets a daemon thread that reads its request lines, calls the
agent (protocol.handle_line) and writes each reply with blocking sends
before it reads the next: replies come in order, and a client slow to read,
or gone mid-reply, holds up only its own thread, never the agent nor another
client.  `close()` stops accepting, removes the socket file (if it is still
this server's) and shuts every connection down, which wakes a thread
blocked reading or writing; one inside an agent method finishes it first.

The socket is 0600 from the moment it is reachable: it is bound inside a
fresh 0700 directory, made 0600, then linked into place.  The process's
umask is never changed, so stages that other threads start meanwhile, and
files they write, are untouched by it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import socket
import stat
import struct
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from pivotbuild.errors import PivotError
from pivotbuild.rpc.address import at_path
from pivotbuild.rpc.agent import INVALID_REQUEST, Agent
from pivotbuild.rpc.protocol import error_line, handle_line

MAX_LINE = 1 << 20  # bytes of one request line, its "\n" not counted
_CLOSE_WAIT = 1.0  # seconds close() waits for the clients' threads, in all
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)  # a gone client is EPIPE, never SIGPIPE


class AgentServerError(PivotError):
    """The agent server cannot listen: another serves this project, or the path is taken."""


class AgentServer:
    """`with AgentServer(root / ".pivot/agent.sock", agent):` serves `agent` on that socket."""

    def __init__(self, path: Path, agent: Agent) -> None:
        self.path = path
        self.agent = agent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept_loop, name="pivotbuild-agent-accept", daemon=True)

    def __enter__(self) -> AgentServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Listen, and serve from daemon threads.  Raises AgentServerError if
        a live server answers on the path (naming its pid) or it cannot be
        bound; a stale socket file (nobody listening) is replaced."""
        if self._listener is not None or self._stop.is_set():
            raise RuntimeError("an AgentServer starts once")
        try:
            self._listener = self._listen()
        except BaseException:
            self.close()
            raise
        self._acceptor.start()

    def close(self) -> None:
        """Stop accepting, remove the socket file, close every connection.  Idempotent."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            clients = list(self._clients.items())
        if self._listener is not None:
            self._wake_w.send(b"x")
            self._acceptor.join()
            with contextlib.suppress(OSError):
                here = os.lstat(self.path)
                if (here.st_dev, here.st_ino) == self._inode:  # not a later server's socket
                    os.unlink(self.path)
            self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        for conn, _ in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes its thread's recv or send
        deadline = time.monotonic() + _CLOSE_WAIT
        for _, thread in clients:  # one inside a slow agent method is left to finish it
            if thread is not threading.current_thread():  # (close() called by an agent method)
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- listening ---------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        try:
            guard = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise AgentServerError(f"cannot listen on {self.path}: {exc.strerror}") from None
        try:
            # Servers starting at once in this directory take turns: the check, then the bind.
            fcntl.flock(guard, fcntl.LOCK_EX)
            self._clear_stale()
            return self._bind()
        finally:
            os.close(guard)

    def _clear_stale(self) -> None:
        """Remove a socket file nobody listens on; raise if somebody does."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise AgentServerError(f"{self.path} exists and is not a socket; move it away and start again")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(5)
        try:
            at_path(self.path, probe.connect)
        except ConnectionRefusedError:  # left by a server that was killed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:  # another user's (EACCES), or a server too stuck to accept (timeout)
            raise AgentServerError(
                f"{self.path} is taken ({exc.strerror or 'no answer'}) but does not serve this project; "
                "stop whatever listens on it, or remove it, and start again"
            ) from None
        else:
            pid = _peer_pid(probe)
            who = f"pid {pid}" if pid else "another process"
            stop = f"stop that pivotbuild (kill {pid})" if pid else "stop that pivotbuild"
            raise AgentServerError(
                f"an agent server is already running for this project ({who}, on {self.path}); "
                f"talk to it with 'pivotbuild rpc METHOD', or {stop} and start again"
            )
        finally:
            probe.close()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        private: str | None = None
        try:
            # Bound where only this user can reach it (a 0700 directory), made 0600, then linked into place.
            private = tempfile.mkdtemp(prefix=".agent-", dir=self.path.parent)
            inner = Path(private, "s")
            at_path(inner, sock.bind)
            os.chmod(inner, 0o600)
            sock.listen()
            os.link(inner, self.path)  # never over a file: _clear_stale left none
            here = os.stat(self.path)
            self._inode = (here.st_dev, here.st_ino)
        except OSError as exc:
            sock.close()
            raise AgentServerError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        finally:
            if private is not None:
                with contextlib.suppress(OSError):
                    os.unlink(Path(private, "s"))
                with contextlib.suppress(OSError):
                    os.rmdir(private)
        sock.setblocking(False)
        return sock

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop.is_set():
                selector.select()
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue  # the client left before it was accepted; or close() woke us
                except OSError:  # out of descriptors: the clients keep being served; try again soon
                    self._stop.wait(0.1)
                    continue
                self._add(conn)

    def _add(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        thread = threading.Thread(target=self._serve, args=(conn,), name="pivotbuild-agent-client", daemon=True)
        with self._lock:
            if self._stop.is_set():
                conn.close()
                return
            self._clients[conn] = thread
        thread.start()

    # -- one client --------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn.makefile("rb") as reader:
                while True:
                    line = reader.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE and not line.endswith(b"\n"):
                        message = f"invalid request: a request line is at most {MAX_LINE} bytes; closing the connection"
                        _send(conn, error_line(INVALID_REQUEST, message))
                        return
                    reply = handle_line(self.agent, line)
                    if reply is not None:
                        _send(conn, reply)
        except OSError:  # the client left (EPIPE, reset), or close() shut the connection
            pass
        finally:
            with self._lock:
                self._clients.pop(conn, None)
            conn.close()


def _send(conn: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[conn.send(view, _NOSIGNAL) :]


def _peer_pid(conn: socket.socket) -> int | None:
    """The pid of the process at the other end (Linux's SO_PEERCRED), if known."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    except OSError:
        return None
    return pid or None
