"""Running one stage's command: its own process group, its output line by line,
its timeout, and killing its whole process tree on timeout or cancel (and, if
pivotbuild is killed, the build's lifeline killing its group).

`run()` blocks; the engine calls it from a worker thread.  It never decides
what runs and never prints: output lines go to a callback.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pivotbuild.build.executors.lifeline import Lifeline

TAIL_LINES = 20
_KILL_GRACE_S = 2.0
_PIPE_GRACE_S = 1.0
_TICK_S = 0.1  # how soon a running stage notices `cancel`


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to run: the command, where, with what environment, for how long at most."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a stage's command ended, and the last lines it printed."""

    returncode: int | None  # None when killed by a signal
    signal: int | None
    timed_out: bool
    cancelled: bool
    tail: tuple[str, ...]
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.cancelled

    def describe(self, timeout: float | None) -> str:
        if self.cancelled:
            return "cancelled"
        if self.timed_out:
            return f"timed out after {timeout:g}s"
        if self.signal is not None:
            return f"killed by {_signal_name(self.signal)}"
        return f"exit status {self.returncode}"


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


OnLine = Callable[[str, str], None]  # (stream, line)


def run(spec: RunSpec, on_line: OnLine, cancel: threading.Event, lifeline: Lifeline | None = None) -> RunResult:
    """Run `spec` to completion (or timeout, or until `cancel` is set); its
    process group is held on `lifeline` while it runs."""
    start = time.monotonic()
    # Our own pipes, passed as plain descriptors: Popen then wraps nothing in
    # file objects (three system calls each) and we read them with os.read.
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        # No preexec_fn (nor user, group or umask): CPython then starts the
        # child with vfork, not a copy of this interpreter's memory
        # (`strace -f -e trace=vfork,clone,clone3 pivotbuild` shows one vfork()
        # per stage; see docs/performance.md).
        proc = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            env=spec.env,
            stdin=_DEVNULL.fd(),
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,  # its own process group: we can kill the whole tree
        )
    except BaseException as exc:
        os.close(out_r)
        os.close(err_r)
        if isinstance(exc, OSError):
            line = f"pivotbuild: cannot start {spec.argv[0]}: {exc.strerror}"
            on_line("stderr", line)
            return RunResult(127, None, False, False, (line,), time.monotonic() - start)
        raise
    finally:
        os.close(out_w)  # the child has its copies: end of file comes when it (and its children) close them
        os.close(err_w)
    pipes = {out_r: "stdout", err_r: "stderr"}
    if lifeline is None:
        return _follow(proc, pipes, timeout=spec.timeout, on_line=on_line, cancel=cancel, start=start)
    lifeline.hold(proc.pid)
    try:
        return _follow(proc, pipes, timeout=spec.timeout, on_line=on_line, cancel=cancel, start=start)
    finally:
        lifeline.release(proc.pid)


class _DevNull:
    """/dev/null, opened once for every stage's stdin (subprocess.DEVNULL opens
    it for each)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._lock = threading.Lock()

    def fd(self) -> int:
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(os.devnull, os.O_RDWR)
        return self._fd


_DEVNULL = _DevNull()


def _pidfd(pid: int) -> int | None:
    """A descriptor that polls readable once `pid` has exited (Linux 5.3+);
    None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, an old kernel, or no descriptor left
        return None


def _follow(
    proc: subprocess.Popen[bytes],
    pipes: dict[int, str],
    *,
    timeout: float | None,
    on_line: OnLine,
    cancel: threading.Event,
    start: float,
) -> RunResult:
    """Pass on the output of the started stage `proc` (its pipes: read end ->
    stream name) until it ends; kill it on timeout or cancel.

    A stage's output closes as it exits, so one poll() of its pipes, one read
    of each and one waitpid usually see it through.  Only a stage still
    running with its output closed is waited for through a pidfd (Linux),
    polled with the timeout; without one, as before, by CPython's waitpid
    loop.  While the pipes are open the exit is asked once a tick (a
    background child may hold them open after the stage ends), and every
    poll wakes at least once a tick to notice `cancel`, an Event, which cannot
    be polled.  The pipes stay blocking: each read follows a poll that found
    data or end of file."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    deadline = start + timeout if timeout else None
    timed_out = cancelled = False
    partial: dict[int, list[bytes]] = {fd: [] for fd in pipes}  # each pipe's unfinished line

    def line(stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        tail.append(text)
        on_line(stream, text)

    def flush(fd: int) -> None:
        if partial[fd]:
            line(pipes[fd], b"".join(partial[fd]))
            partial[fd] = []

    poller = select.poll()
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    open_pipes = len(pipes)
    pidfd: int | None = None
    asked = start  # when we last asked whether the stage had exited
    exited_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and (not open_pipes or now - asked >= _TICK_S):
                asked = now
                if proc.poll() is not None:
                    exited_at = now
                elif not open_pipes and pidfd is None and (pidfd := _pidfd(proc.pid)) is not None:
                    poller.register(pidfd, select.POLLIN)
            if exited_at is not None and (not open_pipes or now - exited_at > _PIPE_GRACE_S):
                # Done; or the shell is gone but a background child still holds
                # the pipe, and what it writes from now on is not the stage's.
                break
            wait = _TICK_S
            if deadline is not None:
                wait = min(wait, max(deadline - now, 0))
            if exited_at is not None:
                wait = min(wait, exited_at + _PIPE_GRACE_S - now + 0.001)
            if open_pipes or pidfd is not None:
                events = poller.poll(wait * 1000)
            else:  # no pidfd, and the stage closed its output but is still running
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                events = []
            for fd, _ in events:
                if fd == pidfd:  # it has exited: the next turn asks
                    poller.unregister(fd)
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:  # end of file
                    flush(fd)
                    poller.unregister(fd)
                    open_pipes -= 1
                    continue
                first, *rest = chunk.split(b"\n")
                partial[fd].append(first)
                if rest:
                    flush(fd)
                    *whole, last = rest
                    for raw in whole:
                        line(pipes[fd], raw)
                    if last:
                        partial[fd].append(last)
            if cancel.is_set() and not cancelled:
                cancelled = True
                kill_tree(proc)
            if deadline is not None and time.monotonic() >= deadline and not timed_out:
                timed_out = True
                kill_tree(proc)
        for fd in pipes:
            flush(fd)
        proc.wait()
    finally:
        for fd in pipes:
            os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        if proc.poll() is None:  # an exception above: never leave the stage running
            kill_tree(proc)
            proc.wait()
    if timed_out or cancelled:
        # Whatever is left in the stage's process group goes too.  (By pid only
        # through the group: after wait() the pid itself may be reused.)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    code = proc.returncode
    sig = -code if code is not None and code < 0 else None
    return RunResult(code if sig is None else None, sig, timed_out, cancelled, tuple(tail), time.monotonic() - start)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the stage's process group and every descendant (even those that
    left the group), give them a moment, then SIGKILL what is left.

    The direct child is waited for only through `proc`: psutil must not reap
    it, or its exit status would be lost.
    """
    import psutil  # here, not at the top: only a kill needs it, and it costs every build 10 ms to import

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    for p in descendants:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    deadline = time.monotonic() + _KILL_GRACE_S
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_KILL_GRACE_S)
    _, alive = psutil.wait_procs(descendants, timeout=max(deadline - time.monotonic(), 0))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def stage_argv(shell: Sequence[str], script: str) -> tuple[str, ...]:
    """`SHELL... -c SCRIPT`."""
    return (*shell, "-c", script)
