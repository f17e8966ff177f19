"""The worker that runs `py:` stages: one process per build and pipeline,
started with its first Python stage (`python -P -m
pivotbuild.build.executors.pyworker FD`: -P, so that the directory it starts
in is not first on `sys.path`), that forks *runners*, processes that run
stages one at a time (PIVOTFILE.md, "Python stages").

Forking from it, not from pivotbuild, gives each runner an interpreter that
has already started and imported pivotbuild, without the hazards of forking
the build itself (its threads, its open descriptors).  A runner imports its
first stage's module itself, so that its top-level code runs in the stage's
directory and environment, and is the code as it is when the stage starts
(its fingerprint, pysource.py, was taken just before).  It then takes the
next stages whose `_key` is its own (the same module, path, directory,
environment but each stage's own variables, and version of every project
file the code reaches), the module loaded: a stage then costs a call, where
a fork cost about 2 ms of CPU (the fork, the pages its writes copied, the
import).  Each stage gets its own directory, environment, `sys.path`,
descriptors and context; one that changes what the next would see, or
fails, or exits, ends its runner (pyrunner.py says how).  What the module
holds (its files, its state) stays from one stage to the next: a reused
runner closes no descriptor but the stage's own, and gives the stage its
job pool at numbers free in it, its MAKEFLAGS made to name them.  What the
worker keeps for new runners is the
project's modules compiled (`_CODE`: the files the stage's code reaches,
compiled after its first stage, each used only while its file is
unchanged), which spares each reading and compiling them.
(Importing them in the worker itself, as it first did, ran their top-level
code in the worker's directory and environment, once for all, and let a
stage run code older than its fingerprint: review of issue 16.)  The worker
is single-threaded and in a session of its own, each runner in its own
(Ctrl-C at the terminal reaches the build, which kills the runners of the
stages it stops, not the worker).

It talks to the build (pystages.py) over a SOCK_SEQPACKET socket, one
`marshal`led dict per message (marshal is built in: the worker imports as
little as it can, since a module it has imported is the one its stages
get).  A request to run a stage carries its call (module, function, where
to import it from, working directory, environment, context, the project
files its code reaches, the runners whose last stage's end the build has
not yet read) and, as SCM_RIGHTS, the descriptors of its stdin, stdout and
stderr (and its job pool's: make.md), then one the worker closes once it
has told the stage's end.  The answer is `{"started": PID}` (the runner's)
as soon as the stage is handed over, and `{"exited": PID, "code": N}` once
the runner says it is done (0), or has exited (as Popen's returncode: -N if
signal N killed it).  A runner is handed its next stage the same way, over
a socket of its own, and says `ok` there when a stage has returned and left
it reusable.  Each request also says how many of the
worker's messages the build had read: a runner whose last stage's end was
not among them takes no stage (the build may still signal its group for
that one), nor does one the build says it has signalled (`retire`).  The
worker hears of a runner's exit through a pidfd, so that it needs no
SIGCHLD handler its runners would inherit.  End of file on the
build's socket (the build is over, or pivotbuild died) ends the worker,
which first kills the process groups of the runners still running a stage
(the build's lifeline does this for shell stages: lifeline.py) and lets the
others go: each ends as a process ends, its atexit functions run.

`python -P -m pivotbuild.build.executors.pyworker --once FILE` runs one call
in that process instead, unforked (`pyrunner.once`: a Dask worker's way,
dasktask.py), through the same code as a runner's.  What runs in a runner
is pyrunner.py.
"""

from __future__ import annotations

import importlib.machinery
import marshal
import os
import select
import signal
import socket
import sys
import weakref

from pivotbuild.build.executors.pyrunner import MAX_MESSAGE, once, run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def main(fd: int) -> None:
    for stream in (sys.stdout, sys.stderr):  # (set once here: each runner's streams are its stage's pipes)
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sock = socket.socket(fileno=fd)
    _cached_imports()
    # A process's first weakref.finalize registers an atexit function (a
    # tempfile.TemporaryDirectory makes one): made here, a stage's is no change
    # of its runner (pyrunner._state counts the finalizers a stage leaves pending).
    weakref.finalize(_Pool, _nothing)
    pool = _Pool(sock)
    try:  # noqa: SIM105 - (contextlib: one import fewer for the worker)
        pool.serve()
    except OSError:
        pass  # (the build's end reset: pivotbuild died with messages unread)
    idle = [r for r in pool.runners.values() if r.done is None]
    for runner in idle:
        if runner.sock.fileno() >= 0:
            runner.sock.close()  # (its end of file: it ends as a process ends)
    _bury([pid for pid, r in pool.runners.items() if r.done is not None])  # (pivotbuild died: stages may still run)
    _reap_idle(idle)


def _nothing() -> None:
    pass


class _Runner:
    """A child of the worker that runs stages, one at a time (busy while
    `done`, the build's descriptor for the stage it runs, is held)."""

    __slots__ = ("done", "key", "pid", "pidfd", "retiring", "sock", "told_at")

    def __init__(self, pid: int, sock: socket.socket, key: tuple[Any, ...], done: int) -> None:
        self.pid = pid
        self.sock = sock
        self.key = key
        self.done: int | None = done
        self.pidfd: int | None = None
        self.told_at = 0  # the number of the message that told the build its last stage's end
        self.retiring = False  # the build signalled it for its stage: it takes no other


MAX_IDLE = 8  # runners kept waiting for a stage like their last; the least recently used goes first


class _Pool:
    """The worker's runners: a request goes to an idle runner that ran a
    stage of the same module, directory, environment and code, else to a new
    one forked for it; the build hears `started` as soon as it is handed
    over and `exited` once the runner has said so (or died)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.runners: dict[int, _Runner] = {}  # pid -> runner
        self.watched: dict[int, _Runner] = {}  # its socket's and its pidfd's descriptors -> runner
        self.idle: list[_Runner] = []  # the least recently used first
        self.sent = 0  # messages sent to the build (each request says how many it had read)

    def serve(self) -> None:
        """Hand out what the build asks for and tell it of ends, until it goes."""
        while True:
            waiting = any(r.pidfd is None for r in self.runners.values())  # (no pidfd: its exit is asked each tick)
            for fd, _ in self.poller.poll(20 if waiting else None):
                if fd == self.sock.fileno():
                    if not self._request():
                        return
                elif (runner := self.watched.get(fd)) is not None:
                    if fd == runner.pidfd:
                        self._gone(runner, os.waitpid(runner.pid, 0)[1])
                    else:
                        self._heard(runner)
            for runner in [r for r in self.runners.values() if r.pidfd is None]:
                done, status = os.waitpid(runner.pid, os.WNOHANG)
                if done:
                    self._gone(runner, status)

    def _request(self) -> bool:
        """Act on what the build sends: a stage to run, or a runner it has
        signalled (which takes no other stage); False once the build has gone."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 9)
        except InterruptedError:
            return True
        if not data:
            return False
        request = marshal.loads(data)
        if "retire" in request:
            self._no_more(request["retire"])
            return True
        done = fds.pop()  # (the build's: closed once the stage's end is told)
        key = _key(request)
        runner = self._take(key, request["seen"])
        if runner is not None:
            try:
                socket.send_fds(runner.sock, [data], fds)
            except OSError:  # (it died idle: its pidfd says so next)
                runner = None
        forked = runner is None
        if runner is None:
            runner = self._fork(request, fds, key)
        for f in fds:
            os.close(f)
        runner.done = done
        self._send({"started": runner.pid})
        if forked:  # (a reused runner's code is as it was when that runner was forked, and compiled then)
            for path in request["code"]:
                _compiled(path)  # (for the next runners: this one compiles what it imports itself)
        return True

    def _send(self, message: dict[str, Any]) -> None:
        self.sock.send(marshal.dumps(message))
        self.sent += 1

    def _take(self, key: tuple[Any, ...], seen: int) -> _Runner | None:
        """The idle runner that last ran a stage like this, if any: not one
        whose last stage's end the build had yet to read when it asked (it
        may still signal that runner's group for that stage)."""
        for i in range(len(self.idle) - 1, -1, -1):
            runner = self.idle[i]
            if runner.key == key and runner.told_at <= seen:
                return self.idle.pop(i)
        return None

    def _no_more(self, pid: int) -> None:
        """The build has signalled `pid`'s group for its stage: no other stage
        goes to that runner (it may have outlived the signal)."""
        runner = self.runners.get(pid)
        if runner is not None:
            runner.retiring = True
            if runner in self.idle:
                self._retire(runner)

    def _fork(self, request: dict[str, Any], fds: list[int], key: tuple[Any, ...]) -> _Runner:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            run(request, fds, theirs)  # never returns
        theirs.close()
        runner = _Runner(pid, ours, key, -1)
        self.runners[pid] = runner
        self.watched[ours.fileno()] = runner
        self.poller.register(ours, select.POLLIN)
        try:
            runner.pidfd = os.pidfd_open(pid)
        except OSError:  # (no pidfd here: its exit is asked for)
            pass
        else:
            self.watched[runner.pidfd] = runner
            self.poller.register(runner.pidfd, select.POLLIN)
        return runner

    def _heard(self, runner: _Runner) -> None:
        """The runner's stage returned and left it as it found it: tell the
        build, and keep the runner for the next stage like it."""
        try:
            said = runner.sock.recv(MAX_MESSAGE)
        except OSError:
            said = b""
        if not said or runner.done is None:
            return  # (it is going: its pidfd says when)
        self._told(runner, 0)
        if runner.retiring:
            self._retire(runner)
            return
        self.idle.append(runner)
        if len(self.idle) > MAX_IDLE:
            self._retire(self.idle[0])

    def _told(self, runner: _Runner, code: int) -> None:
        self._send({"exited": runner.pid, "code": code})
        runner.told_at = self.sent
        if runner.done is not None:
            os.close(runner.done)  # (after the message: the build reads its code when this closes)
            runner.done = None

    def _gone(self, runner: _Runner, status: int) -> None:
        """A runner has exited (and is reaped): its stage's end, if it was running one."""
        if runner.done is not None:
            try:  # (what it said before it went counts first)
                said = runner.sock.recv(64, socket.MSG_DONTWAIT)
            except OSError:
                said = b""
            self._told(runner, 0 if said else os.waitstatus_to_exitcode(status))
        self._retire(runner)
        if runner.pidfd is not None:
            self.watched.pop(runner.pidfd, None)
            self.poller.unregister(runner.pidfd)
            os.close(runner.pidfd)
        del self.runners[runner.pid]

    def _retire(self, runner: _Runner) -> None:
        """No more stages for `runner` (an idle one ends at its socket's end of file)."""
        if runner in self.idle:
            self.idle.remove(runner)
        if runner.sock.fileno() >= 0:
            self.watched.pop(runner.sock.fileno(), None)
            self.poller.unregister(runner.sock)
            runner.sock.close()


# Compiled project modules, by (path, mtime_ns, size, inode): what the worker
# compiled for its runners, and each runner for itself.  A module is still
# imported, its top-level code run, by each runner afresh; only reading and
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


_OWN = frozenset({"PIVOT_STAGE", "MAKEFLAGS"})


def _key(request: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a runner's next stage must share with the stages it ran: the
    module, where it is imported from, the directory and environment its
    top-level code ran in (but what is each stage's own: `PIVOT_STAGE`, and
    `MAKEFLAGS`, which names its job pool's descriptors), and the version of every
    project file its code reaches (pysource.py: an edited one is imported
    afresh, by a new runner)."""
    versions: list[tuple[Any, ...]] = []
    for path in request["code"]:
        try:
            st = os.stat(path)
        except OSError:
            versions.append((path,))
        else:
            versions.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
    env = tuple(item for item in request["env"].items() if item[0] not in _OWN)
    return (request["module"], tuple(request["path"]), request["cwd"], env, tuple(versions))


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


def _reap_idle(runners: list[_Runner]) -> None:
    """Reap the runners running no stage, told to end: each runs its atexit
    functions (its module's) as a process ends; one still there after two
    seconds in all is killed (it, not its group: no stage of its runs)."""
    import time

    deadline = time.monotonic() + 2.0
    for runner in runners:
        try:
            while os.waitpid(runner.pid, os.WNOHANG)[0] == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.kill(runner.pid, signal.SIGKILL)
                    os.waitpid(runner.pid, 0)
                    break
                if runner.pidfd is not None:
                    waiting = select.poll()
                    waiting.register(runner.pidfd, select.POLLIN)
                    waiting.poll(left * 1000)
                else:
                    time.sleep(min(left, 0.005))
        except ChildProcessError:
            pass  # (reaped already)


def _bury(busy: list[int]) -> None:
    """Kill the process groups of the runners still running a stage, as the
    build's lifeline would (lifeline.py): SIGTERM, two seconds' grace, SIGKILL."""
    import time

    running = set(busy)
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


if __name__ == "__main__":
    if sys.argv[1] == "--once":
        once(sys.argv[2])
    else:
        main(int(sys.argv[1]))
