"""The build server's client: a plain build handed to a resident pivotbuild.

`pivotbuild` starts a Python interpreter, imports the engine and reads the
compiled plan, the lockfiles and the stat caches before its first stage: most
of an incremental build's time (docs/performance.md).  A build server
(cli/server.py) has done all of that once, and keeps the project loaded
between builds.  `offer` hands it this build: the command line, the working
directory, the environment, the umask and the standard streams (the
descriptors themselves, SCM_RIGHTS), so the server builds exactly where and as
this process would have, writing to the same terminal or pipes; Ctrl-C,
SIGTERM, SIGHUP and SIGQUIT are passed on; the exit status comes back.

It declines (`Declined`: the build runs in this process, as without a
server) where servers are off (`enabled`: PIVOT_SERVER=0, or a CI job), when
no server is running (one is started for next time: `start_server`), when it
is busy with another build, when the command is not a plain build, or when
the server was started in another context: another environment, limits,
cgroup, user, Python or pivotbuild (the server's name is a hash of all
that, and it compares the whole of it).
It also declines under make's jobserver in its descriptor form, whose
descriptors are this process's own.  docs/server.md says it all for users.

Imports only what Python's start-up has already loaded, and `_socket` (not
`socket`, whose import costs more than the whole request).
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False  # not typing's: a build through the server imports no typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO

PROTOCOL = 1
MOST = 8  # servers of one user at once (each distinct context has its own)
STARTS = False  # whether this process starts a server once its build ends (cli.run; then copying.Left)
# Variables that differ between calls in one session and that nothing reads
# before a build starts: the same server takes them (each request carries
# the whole environment, and the build runs with exactly it).
VOLATILE = frozenset(
    {
        "_",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "COLUMNS",
        "LINES",
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "MAKE_TERMOUT",
        "MAKE_TERMERR",
        "PIVOT_STAGE",
        "PIVOT_LIFELINE",
    }
)
_HEADER = 4  # each message: its length (4 bytes, big-endian), then marshal's bytes
_STDIO = (0, 1, 2)
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")


_YES = ("1", "on", "yes", "true")
_NO = ("0", "off", "no", "false")


def enabled() -> bool:
    """Whether builds go through a server: PIVOT_SERVER says (1, on, yes or
    true; 0, off, no or false); without it, yes, except in a CI job (`CI` set,
    and not to 0, off, no or false, as the CI services set it), whose builds
    each start afresh and must leave no process behind (docs/server.md)."""
    said = os.environ.get("PIVOT_SERVER", "").strip().lower()
    if said in _YES or said in _NO:
        return said in _YES
    ci = os.environ.get("CI", "").strip().lower()
    return not ci or ci in _NO


def context() -> bytes:
    """What a server must share with this process to build as it would: the
    Python and pivotbuild it runs, the user, the limits, the cgroup and
    namespaces, the CPUs and priority, and the environment (less VOLATILE)."""
    import _signal  # type: ignore[import-not-found]  # (not `signal`, whose enums cost 5 ms: loaded at start-up)

    spaces = []
    for space in ("mnt", "pid", "net", "user", "uts", "ipc", "cgroup"):
        try:
            spaces.append(os.readlink(f"/proc/self/ns/{space}"))
        except OSError:
            spaces.append("")
    ignored = tuple(n for n in range(1, _signal.NSIG) if _ignored(_signal, n))
    blocked = tuple(sorted(_signal.pthread_sigmask(_signal.SIG_BLOCK, ())))
    env = sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE)
    facts = (
        *_interpreter(),
        os.getuid(),
        os.geteuid(),
        os.getgid(),
        os.getegid(),
        tuple(sorted(os.getgroups())),
        _read("/proc/self/limits") or _limits(),
        tuple(sorted(os.sched_getaffinity(0))),
        os.getpriority(os.PRIO_PROCESS, 0),
        ignored,
        blocked,
        tuple(spaces),
        _read("/proc/self/cgroup"),
        tuple(env),
    )
    return marshal.dumps(facts, 0)  # (version 0: no interning nor references, so equal facts are equal bytes)


def _interpreter() -> tuple[int, str, str, str]:
    """The context's first facts: the protocol, the Python and the pivotbuild
    that serve (what the launcher cannot know: `describe`)."""
    from pivotbuild import __file__ as package

    return (PROTOCOL, sys.executable, sys.version, os.path.dirname(package))


# What `describe` writes: this line, the launcher's "DEV INO MTIME_NS SIZE",
# the number of facts, then those facts (marshal, version 0).
LAUNCH_MAGIC = b"PVLAUNCH1\n"


def describe(where: str, launcher: str) -> None:
    """Tell the launcher `launcher` (bin/launcher.c, the installed `pivotbuild`
    that ran this program) the context's first facts, which it cannot know
    (`_interpreter`), in `where`, the servers' own private directory: with them
    it finds this context's server itself, in about 1 ms, where this program
    takes Python's whole start-up.  Kept for that launcher file alone (its
    stamp): a reinstalled one runs this program again, which writes them
    again.  Best effort: without them the launcher only runs this program."""
    try:
        st = os.stat(launcher)
    except OSError:
        return
    head = _interpreter()
    content = b"%s%d %d %d %d\n%d\n%s" % (
        LAUNCH_MAGIC,
        st.st_dev,
        st.st_ino,
        st.st_mtime_ns,
        st.st_size,
        len(head),
        b"".join(marshal.dumps(fact, 0) for fact in head),
    )
    path = os.path.join(where, name(os.fsencode(launcher)) + ".launch")
    if _read(path) == content:
        return
    temporary = f"{path}.{os.getpid()}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except OSError:
        try:  # noqa: SIM105 (contextlib: an import this module spares)
            os.unlink(temporary)
        except OSError:
            pass


def _ignored(signals: object, signum: int) -> bool:
    """Whether `signum` is ignored here (as the stages would inherit it)."""
    try:
        return signals.getsignal(signum) == signals.SIG_IGN  # type: ignore[attr-defined,no-any-return]
    except (ValueError, OSError):
        return False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _limits() -> tuple[tuple[int, int], ...]:
    """The resource limits, where /proc does not list them."""
    import resource

    return tuple(resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_"))


def name(facts: bytes) -> str:
    """The server's socket name for these facts (two CRCs: the server compares
    the facts themselves, so a collision only costs a refusal)."""
    import zlib

    return f"{zlib.crc32(facts):08x}{zlib.crc32(facts[::-1]):08x}"


# The longest path a Unix socket may have (sun_path, less its terminating NUL).
SOCKET_PATH_MAX = 107


def directory() -> str | None:
    """Where this user's servers listen (PIVOT_SERVER_DIR, else
    $XDG_RUNTIME_DIR/pivotbuild, else /tmp/pivotbuild-server-UID), made
    private if new; None if it is not a private directory of this user's, or
    if its path is too long for a socket's in it (`NAME.sock`)."""
    base = os.environ.get("PIVOT_SERVER_DIR")
    if not base:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = os.path.join(runtime, "pivotbuild") if runtime else f"/tmp/pivotbuild-server-{os.getuid()}"
    if len(os.fsencode(os.path.join(base, "0" * 16 + ".sock"))) > SOCKET_PATH_MAX:
        return None  # (no socket can be bound or reached there)
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(base)
    except OSError:
        return None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # another user's, or open to others: a server there could not be trusted
    return base


class Declined:
    """Why `offer` did not hand the build over; `start` if a server should be
    started for the next build (none was listening)."""

    __slots__ = ("start",)

    def __init__(self, start: bool = False) -> None:
        self.start = start


def offer(argv: Sequence[str], launcher: str | None = None) -> int | Declined:
    """Hand this build to the server: its exit status once it is built, or
    Declined (nothing was done) if it must run in this process.  `launcher`:
    the launcher that ran this program, which is told the facts it needs to
    do this itself next time (`describe`)."""
    if not enabled() or _make_descriptors() or os.environ.get("_PIVOTBUILD_COMPLETE"):
        return Declined()
    where = directory()
    if where is None:
        return Declined()
    if launcher:
        describe(where, launcher)
    facts = context()
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(os.path.join(where, name(facts) + ".sock"))
        except OSError:
            from pivotbuild.cli import buildargs

            return Declined(start=buildargs.parse(list(argv)) is not None)  # (a server only serves plain builds)
        return _request(sock, list(argv), facts)
    finally:
        sock.close()


def _make_descriptors() -> bool:
    """Whether MAKEFLAGS hands this process make's job pool as descriptors
    (make 4.3's pipe), which are this process's own: such a build runs here."""
    flags = os.environ.get("MAKEFLAGS", "")
    for word in flags.split():
        for prefix in ("--jobserver-auth=", "--jobserver-fds="):
            if word.startswith(prefix) and not word[len(prefix) :].startswith("fifo:"):
                return True
    return False


def _request(sock: object, argv: list[str], facts: bytes) -> int | Declined:
    import _socket

    assert isinstance(sock, _socket.socket)
    try:
        here = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return Declined()  # (the build says why the directory cannot be used)
    try:
        request = {"argv": argv, "env": dict(os.environ), "umask": _umask(), "facts": facts, "pid": os.getpid()}
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _fds(here, *_STDIO))]
        message = frame(request)
        try:
            sent = sock.sendmsg([message], rights)
            if sent < len(message):
                sock.sendall(message[sent:])
            answer = receive(sock)
        except OSError:  # a standard stream closed (EBADF), a server gone meanwhile
            return Declined()
    finally:
        os.close(here)
    if answer is None or answer.get("ok") is not True:
        return Declined()
    return _await_exit(sock)


def _await_exit(sock: object) -> int:
    """Pass signals on until the server says how the build ended."""
    import _signal
    import _socket

    assert isinstance(sock, _socket.socket)

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 (contextlib.suppress: an import a build through the server spares)
            sock.sendall(frame({"signal": signum}))
        except OSError:
            pass

    for sig_name in _FORWARDED:
        signum = getattr(_signal, sig_name)
        if _signal.getsignal(signum) != _signal.SIG_IGN:  # (`nohup`: a hangup stays ignored)
            _signal.signal(signum, forward)
    try:
        answer = receive(sock)
    except OSError:
        answer = None
    if answer is None or not isinstance(answer.get("exit"), int):
        sys.stderr.write(
            "pivotbuild: the build server stopped before the build ended; what finished is recorded:"
            " run the build again (PIVOT_SERVER=0 builds without a server)\n"
        )
        return 2
    code = answer["exit"]
    assert isinstance(code, int)
    return code


def frame(message: dict[str, object]) -> bytes:
    """One message as it goes on the socket, either way."""
    body = marshal.dumps(message)
    return len(body).to_bytes(_HEADER, "big") + body


def receive(sock: object) -> dict[str, object] | None:
    """One message (a dict), or None if the other end closed first or sent
    something else.  Raises OSError as the socket does."""
    head = exactly(sock, _HEADER)
    if head is None:
        return None
    return decode(exactly(sock, int.from_bytes(head, "big")))


def decode(body: bytes | None) -> dict[str, object] | None:
    """A message's body as the dict it must be (None: it is not one)."""
    if body is None:
        return None
    try:
        value = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def exactly(sock: object, n: int) -> bytes | None:
    """`n` bytes from `sock` (None if it closed first)."""
    import _socket

    assert isinstance(sock, _socket.socket)
    parts = []
    while n:
        part = sock.recv(min(n, 1 << 20))
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _fds(*fds: int) -> bytes:
    import array

    return array.array("i", fds).tobytes()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def start_server(sends: list[str]) -> None:
    """Start a server for the next build, detached (its own session, no
    descriptor of ours: a pipe reading our output ends when we do), unless
    MOST servers of this user's run already.  Best effort: a server that
    cannot start only leaves builds as they were.

    `sends`: the copies this build kept in the cache and left unsent
    (cache/copying.py, `Left`), which the server sends as it begins.  Its
    standard input names them: a file of their paths, each ended by a NUL,
    removed as soon as it is made (`_named`; the server reads it with `named`)."""
    where = directory()
    if where is None or not _room(where):
        return
    import contextlib
    import subprocess

    with contextlib.suppress(OSError), _named(sends) as given:
        subprocess.Popen(
            [sys.executable, "-P", "-m", "pivotbuild.cli.server"],  # (-P: not `/` first on its path)
            stdin=given,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )


def _named(paths: list[str]) -> IO[bytes]:
    """A file that names `paths`, read from its start, already removed (/dev/null:
    none, or none could be written: the server then sends nothing, and the
    kernel writes the copies out in its own time)."""
    import tempfile

    if paths:
        try:
            named = tempfile.TemporaryFile()  # noqa: SIM115 (returned open: the caller closes it)
        except OSError:
            pass
        else:
            try:
                named.write(b"".join(os.fsencode(path) + b"\0" for path in paths))
                named.seek(0)
                return named
            except OSError:
                named.close()
    return open(os.devnull, "rb")


def named(fd: int) -> list[str]:
    """The paths a file made by `_named` names, read from `fd` (the server's
    standard input); none if it is not such a file."""
    import stat

    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        with open(fd, "rb", closefd=False) as given:
            return [os.fsdecode(path) for path in given.read().split(b"\0") if path]
    except OSError:
        return []


def _room(where: str) -> bool:
    """Whether fewer than MOST servers run in `where` (each holds its lock
    file locked); the socket and lock of one that died (SIGKILL) go."""
    import fcntl
    import time

    running = 0
    try:
        names = os.listdir(where)
    except OSError:
        return False
    for entry in names:
        if not entry.endswith(".lock"):
            continue
        lock = os.path.join(where, entry)
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < 10:
                running += 1  # (new: maybe a server that has yet to lock it)
                continue
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            running += 1
            continue
        except OSError:
            continue
        finally:
            os.close(fd)
        for stale in (lock[: -len(".lock")] + ".sock", lock):
            try:  # noqa: SIM105 (contextlib: an import this module spares)
                os.unlink(stale)
            except OSError:
                pass
    return running < MOST
