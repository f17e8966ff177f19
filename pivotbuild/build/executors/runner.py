"""Running one stage's command: its own process group, its output line by line,
its timeout, and killing its whole process tree on timeout or cancel (and, if
pivotbuild is killed, the build's lifeline killing its group).

`run()` blocks; the engine calls it from a worker thread.  It never decides
what runs and never prints: output lines go to a callback.
"""

from __future__ import annotations

import contextlib
import os
import selectors
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


@dataclass(frozen=True, slots=True)
class RunSpec:
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
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
    try:
        proc = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: we can kill the whole tree
        )
    except OSError as exc:
        line = f"pivotbuild: cannot start {spec.argv[0]}: {exc.strerror}"
        on_line("stderr", line)
        return RunResult(127, None, False, False, (line,), time.monotonic() - start)
    if lifeline is None:
        return _follow(proc, spec.timeout, on_line, cancel, start)
    lifeline.hold(proc.pid)
    try:
        return _follow(proc, spec.timeout, on_line, cancel, start)
    finally:
        lifeline.release(proc.pid)


def _follow(
    proc: subprocess.Popen[bytes], timeout: float | None, on_line: OnLine, cancel: threading.Event, start: float
) -> RunResult:
    """Pass on the output of the started stage `proc` until it ends; kill it on
    timeout or cancel."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    deadline = start + timeout if timeout else None
    timed_out = cancelled = False
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    sel = selectors.DefaultSelector()
    for stream in (proc.stdout, proc.stderr):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ)

    def emit(fd: int, final: bool) -> None:
        buf = buffers[fd]
        while (nl := buf.find(b"\n")) >= 0:
            _line(names[fd], bytes(buf[:nl]))
            del buf[: nl + 1]
        if final and buf:
            _line(names[fd], bytes(buf))
            buf.clear()

    def _line(stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        tail.append(text)
        on_line(stream, text)

    exited_at: float | None = None
    try:
        while True:
            if exited_at is None and proc.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and (not sel.get_map() or time.monotonic() - exited_at > _PIPE_GRACE_S):
                # Done; or the shell is gone but a background child still holds
                # the pipe, and what it writes from now on is not the stage's.
                for fd in list(buffers):
                    emit(fd, final=True)
                break
            wait = 0.1
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0))
            if sel.get_map():
                events = sel.select(wait)
            else:  # the stage closed its output but is still running
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                events = []
            for key, _ in events:
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    buffers[fd] += chunk
                    emit(fd, final=False)
                else:
                    emit(fd, final=True)
                    sel.unregister(key.fileobj)
            if cancel.is_set() and not cancelled:
                cancelled = True
                kill_tree(proc)
            if deadline is not None and time.monotonic() >= deadline and not timed_out:
                timed_out = True
                kill_tree(proc)
        proc.wait()
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
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
