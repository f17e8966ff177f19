"""Running one stage's command: its own process group, its output line by line,
its timeout, and killing its whole process tree on timeout or cancel (and, if
pivotbuild is killed, the build's lifeline killing its group).

`Process` never blocks: the build loop follows every running stage through
one poller (poller.py, local.py).  `run()` follows one to its end, blocking
(for a caller with a thread to spare).  Neither decides what runs nor
prints: output lines go to a callback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pivotbuild.build.executors.lifeline import VARIABLE, Lifeline
from pivotbuild.build.executors.poller import Poller
from pivotbuild.build.executors.spawn import Child, Starter, Starts, begin, devnull
from pivotbuild.structs import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pivotbuild.build.executors.pystages import PyCall

TAIL_LINES = 20
_KILL_GRACE_S = 2.0
_PIPE_GRACE_S = 1.0
TICK_S = 0.1  # how soon a running stage notices `cancel`, or its exit while a child holds its pipes


@struct(frozen=True, slots=True)
class RunSpec:
    """What to run: the command, where, with what environment, for how long at most."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    timeout: float | None = None
    pass_fds: tuple[int, ...] = ()  # descriptors the command inherits (a job pool's: see makejobs.py)
    py: PyCall | None = None  # a `py:` stage's call (then `argv` only names it, for messages)


@struct(frozen=True, slots=True)
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
    """Run `spec` to completion (or timeout, or until `cancel` is set), blocking:
    one `Process` followed by a poller of its own.  (The build follows all its
    stages in one poller instead: see local.py.)"""
    poller = Poller()
    ended: list[RunResult] = []
    try:
        proc = Process(spec, on_line, ended.append, poller, lifeline)
        try:
            while not ended:
                now = time.monotonic()
                if cancel.is_set():
                    proc.kill()
                due = proc.on_time(now)
                if not ended:
                    poller.wait(TICK_S if due is None else min(TICK_S, due - now))
        finally:
            if not ended:  # an exception above: never leave the stage running
                proc.abandon()
    finally:
        poller.close()
    return ended[0]


_POPEN = Starter(spawn=False)


def _pidfd(pid: int) -> int | None:
    """A descriptor that polls readable once `pid` has exited (Linux 5.3+);
    None where there is none.  Raises ProcessLookupError if `pid` is gone
    already (a `py:` stage's child, reaped by the worker: pystages.py)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (AttributeError, OSError):  # not Linux, an old kernel, or no descriptor left
        return None


class Process:
    """A stage's command, started at once and then followed without blocking
    by whoever waits on `poller`: its output lines go to `on_line` as they
    come, and `on_end` gets its result, once (at once if it cannot start).
    `on_time(now)` must be called at least at the time it returns (and a
    tick after each call while it runs), `kill()` to cancel it; its process
    group is held on `lifeline` while it runs; `starter` starts it (by
    default, through Popen), with `more_env` added to the spec's
    environment and `pass_fds` in place of the spec's (an attempt's job
    pool: local.py), in one copy of the environment.

    A stage's output closes as it exits, so one read of each pipe at its end
    of file and one waitpid usually see it through.  Only a stage still
    running with its output closed is awaited through a pidfd (Linux),
    opened then; without one, its exit is asked each tick.  While the pipes
    are open its exit is asked each tick too: a background child may hold
    them open after the stage ends, and what it writes after a grace is not
    the stage's.  The pipes stay blocking: each read follows a poll that
    found data or end of file."""

    # What most stages never change, set here once rather than by each
    # stage's __init__ (a stage is started per 1 to 2 ms of the loop's time).
    deadline: float | None = None
    timed_out = cancelled = ended = False
    exited_at: float | None = None
    pidfd: int | None = None
    signalled = False  # whether the build has signalled its group (a timeout, a cancel)
    kill_at: float | None = None  # set while killing: when SIGKILL follows SIGTERM
    descendants: Sequence[Any] = ()  # (psutil processes) those SIGTERMed

    def __init__(
        self,
        spec: RunSpec,
        on_line: OnLine,
        on_end: Callable[[RunResult], None],
        poller: Poller,
        lifeline: Lifeline | None = None,
        *,
        starter: Starts | None = None,
        more_env: Mapping[str, str] | None = None,
        pass_fds: tuple[int, ...] | None = None,
    ) -> None:
        self.start = self.asked = time.monotonic()  # (asked: when we last asked whether it had exited)
        self.program = spec.argv[0]
        if spec.timeout:
            self.deadline = self.start + spec.timeout
        self.on_line = on_line
        self.on_end = on_end
        self.poller = poller
        self.lifeline = lifeline
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.pipes: dict[int, str] = {}  # read end -> stream, while open
        self.partial: dict[int, list[bytes]] = {}  # each pipe's unfinished line
        # Our own pipes, passed as plain descriptors: Popen then wraps nothing in
        # file objects (three system calls each) and we read them with os.read.
        # A stage whose stdout goes to a file gets /dev/null: no pipe to watch
        # close (spawn.begin).
        err_r, err_w = os.pipe()
        # Its line in the lifeline's table is marked before it starts, and the
        # mark's value is in its environment: a build killed while it starts
        # does not leave it running (lifeline.py).
        expected = lifeline.expect() if lifeline is not None else None
        env = spec.env
        if expected is not None:
            env = {**env, **more_env, VARIABLE: expected[1]} if more_env else {**env, VARIABLE: expected[1]}
        elif more_env:
            env = {**env, **more_env}
        keep = spec.pass_fds if pass_fds is None else pass_fds
        try:
            self.proc, out_r = begin(
                starter or _POPEN, spec.argv, spec.cwd, env, stdin=devnull(), stderr=err_w, pass_fds=keep
            )
        except BaseException as exc:
            if expected is not None and isinstance(exc, OSError):  # (else it may have started: the mark stays)
                assert lifeline is not None
                lifeline.forget(expected)
            os.close(err_r)
            if not isinstance(exc, OSError):
                raise
            self.ended = True
            line = self._cannot_start(exc)
            on_end(RunResult(127, None, False, False, (line,), time.monotonic() - self.start))
            return
        finally:
            os.close(err_w)
        if lifeline is not None:
            lifeline.hold(self.proc.pid, expected)
        if out_r >= 0:
            self._follow(out_r, "stdout")
        self._follow(err_r, "stderr")

    def _follow(self, fd: int, stream: str) -> None:
        self.pipes[fd] = stream
        self.partial[fd] = []
        self.poller.watch(fd, functools.partial(self._readable, fd))

    # -- events --------------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        chunk = os.read(fd, 65536)
        if not chunk:  # end of file
            self._close_pipe(fd)
            if not self.pipes:
                self._output_closed()
            return
        first, *rest = chunk.split(b"\n")
        partial = self.partial[fd]
        partial.append(first)
        if rest:
            stream = self.pipes[fd]
            self._flush(fd)
            *whole, last = rest
            for raw in whole:
                self._line(stream, raw)
            if last:
                partial.append(last)

    def _output_closed(self) -> None:
        if self.exited_at is None:
            now = time.monotonic()
            self.asked = now
            if self.proc.poll() is not None:
                self.exited_at = now
            else:
                try:
                    exit_fd = getattr(self.proc, "exit_fd", None)  # (a py: stage's: pystages.PyChild)
                    pidfd = exit_fd() if exit_fd is not None else _pidfd(self.proc.pid)
                except ProcessLookupError:
                    self.exited_at = now  # (reaped by its parent, the worker: `wait` reads its code)
                else:
                    if pidfd is not None:
                        self.pidfd = pidfd
                        self.poller.watch(pidfd, self._exited)
        if self.exited_at is not None and self.kill_at is None:
            self._end()  # (most stages: exited as their output closed, nothing to wait for)
        else:
            self._maybe_end()

    def _exited(self) -> None:
        self._close_pidfd()
        self.proc.poll()
        self.exited_at = time.monotonic()
        self._maybe_end()

    def on_time(self, now: float) -> float | None:
        """Act on what is due at `now` (a timeout, an exit asked each tick, the
        end of a grace); returns when this process is next due, None once ended."""
        if self.ended:
            return None
        if self.exited_at is None and self.pidfd is None and now - self.asked >= TICK_S:
            self.asked = now
            if self.proc.poll() is not None:
                self.exited_at = now
        if self.deadline is not None and now >= self.deadline and not self.timed_out:
            self.timed_out = True
            self._terminate(now)
        if self.kill_at is not None and now >= self.kill_at:
            self._kill_now()
        self._maybe_end()
        if self.ended:
            return None
        due = [self.asked + TICK_S] if self.exited_at is None and self.pidfd is None else []
        if self.deadline is not None and not self.timed_out:
            due.append(self.deadline)
        if self.kill_at is not None:
            due.append(min(self.kill_at, now + TICK_S / 2))  # (killed descendants are polled)
        if self.exited_at is not None and self.pipes:
            due.append(self.exited_at + _PIPE_GRACE_S + 0.001)
        return min(due, default=None)

    def kill(self) -> None:
        """Cancel it: its tree is killed, and its result says cancelled."""
        if self.ended or self.cancelled:
            return
        self.cancelled = True
        if not self.timed_out:
            self._terminate(time.monotonic())

    # -- ending ----------------------------------------------------------------------------

    def _maybe_end(self) -> None:
        if self.ended or self.exited_at is None:
            return
        if self.pipes and time.monotonic() - self.exited_at <= _PIPE_GRACE_S:
            return  # its output may still come; else a background child holds the pipe, and what it writes is not ours
        if self.kill_at is not None and self._descendants_alive():
            return  # until they are gone, or their grace is over and they are killed
        self._end()

    def _stop_following(self) -> None:
        self.ended = True
        for fd in list(self.pipes):
            self._close_pipe(fd)
        self._close_pidfd()

    def _end(self) -> None:
        if self.pipes or self.pidfd is not None:
            self._stop_following()
        else:
            self.ended = True
        proc = self.proc
        proc.wait()  # (already reaped: it exited)
        if (self.timed_out or self.cancelled) and self._group_is_its_own():
            # Whatever is left in the stage's process group goes too.  (By pid only
            # through the group: after wait() the pid itself may be reused.)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.lifeline is not None:
            self.lifeline.release(proc.pid)
        code = proc.returncode
        if type(proc) is Child and proc.block is not None:
            failed = proc.start_error()  # (cloned: its exec's error comes with its exit)
            if failed is not None:
                self._cannot_start(failed)
        sig = -code if code is not None and code < 0 else None
        tail = tuple(self.tail)
        duration = time.monotonic() - self.start
        self.on_end(RunResult(code if sig is None else None, sig, self.timed_out, self.cancelled, tail, duration))

    def abandon(self) -> None:
        """Stop following it (an exception in whoever follows it): kill its group at once, reap it."""
        if self.ended:
            return
        self._stop_following()
        if self.proc.poll() is None:
            self._killpg(signal.SIGKILL)
            self.proc.wait()
        if self.lifeline is not None:
            self.lifeline.release(self.proc.pid)

    # -- killing: SIGTERM to the tree, SIGKILL after a grace -------------------------------

    def _terminate(self, now: float) -> None:
        """SIGTERM the stage's process group and every descendant (even those that
        left the group); what is left at `kill_at` is SIGKILLed.  The direct
        child is reaped only through `proc`: psutil must not reap it, or its
        exit status would be lost."""
        import psutil  # here, not at the top: only a kill needs it, and it costs every build 10 ms to import

        if not self._group_is_its_own():
            return
        if not self.signalled and (retire := getattr(self.proc, "retire", None)) is not None:
            retire()  # (a py: stage's runner: it takes no other stage now)
        self.signalled = True
        descendants = []
        if self.exited_at is None:  # (once reaped, its pid may be another's)
            with contextlib.suppress(psutil.Error):
                descendants = psutil.Process(self.proc.pid).children(recursive=True)
        self._killpg(signal.SIGTERM)
        for p in descendants:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        self.descendants = descendants
        self.kill_at = now + _KILL_GRACE_S

    def _killpg(self, sig: int) -> None:
        """`sig` to the stage's process group, while it has not been reaped."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if type(self.proc) is Child:
                self.proc.killpg(sig)  # (one cloned, not yet in its own session: itself)
            else:
                os.killpg(self.proc.pid, sig)

    def _group_is_its_own(self) -> bool:
        """Whether the stage's process group may be signalled for it: not a
        `py:` stage's once its end is known (pystages.PyChild), unless the
        build signalled it already, as its runner goes on to the next stage."""
        return self.signalled or getattr(self.proc, "exit_fd", None) is None or self.proc.poll() is None

    def _kill_now(self) -> None:
        import psutil

        self._killpg(signal.SIGKILL)
        for p in self.descendants:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.descendants = []
        self.kill_at = None

    def _descendants_alive(self) -> bool:
        import psutil

        alive = []
        for p in self.descendants:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        self.descendants = alive
        return bool(alive)

    # -- output ------------------------------------------------------------------------------

    def _cannot_start(self, exc: OSError) -> str:
        """Says on the stage's stderr that its program (for most, the shell)
        could not start: the line."""
        line = f"pivotbuild: cannot start {self.program}: {exc.strerror}"
        self.tail.append(line)
        self.on_line("stderr", line)
        return line

    def _line(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.tail.append(text)
        self.on_line(stream, text)

    def _flush(self, fd: int) -> None:
        partial = self.partial[fd]
        if partial:
            self._line(self.pipes[fd], b"".join(partial))
            partial.clear()

    def _close_pipe(self, fd: int) -> None:
        self._flush(fd)
        self.poller.unwatch(fd)
        os.close(fd)
        del self.pipes[fd]

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            self.poller.unwatch(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


def failed(text: str) -> RunResult:
    """A stage failed by us, not by its command: `text` says why."""
    return RunResult(1, None, False, False, (text,), 0.0)


def internal_error(exc: Exception) -> RunResult:
    """The result of a stage that a bug of ours failed (the build goes on)."""
    return failed(f"pivotbuild: internal error running this stage: {exc!r}")


def stage_argv(shell: Sequence[str], script: str) -> tuple[str, ...]:
    """`SHELL... -c SCRIPT`."""
    return (*shell, "-c", script)
