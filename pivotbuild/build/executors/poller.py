"""The build loop's one wait: a selector (epoll on Linux) over the descriptors
of everything running (each stage's pipes, a pidfd while its exit is
awaited), a wakeup pipe other threads and signal handlers write to, and the
clocks of what must happen at a given time (a stage's timeout, the end of a
kill's grace).

Everything watched is handled in the thread that waits, so the local
executor needs no thread of its own: a stage costs the build a few system
calls, not a handoff between threads per event (see docs/performance.md).

On Linux, where it was built, the wait is `_nearwake`'s: the same epoll set,
but a thread that sleeps in it is moved to the core a child's exit frees,
so that the loop runs there at once instead of queued behind the other
stage (the C file says why).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
from collections.abc import Callable

_NEARWAKE_API = 1  # what this module calls _nearwake with (its API constant)
try:
    from pivotbuild.build.executors import _nearwake
except ImportError:  # not built at install (no C compiler, another platform): select.epoll's own wait
    _nearwake = None  # type: ignore[assignment]
else:
    if getattr(_nearwake, "API", None) != _NEARWAKE_API:  # built from another version of its source
        _nearwake = None  # type: ignore[assignment]

Clock = Callable[[float], float | None]  # given the time, acts on what is due; says when it is next due


class Poller:
    """`watch` a descriptor with a callback run (in the waiting thread) when it
    is readable; `clocks` are run before each wait; `wake` ends a wait from any
    thread or a signal handler.  The poll set and the pipe are made on first use.

    It is `select.epoll` itself where there is one (Linux), not `selectors`:
    each stage is watched and unwatched once or twice, and the selector's
    key objects and checks cost more than the system calls."""

    def __init__(self) -> None:
        self._poll: _Poll | None = None
        # each watched descriptor's callback (None: the wakeup pipe's)
        self._callbacks: dict[int, Callable[[], None] | None] = {}
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()  # a wake never writes to a descriptor `close` let go
        self._interrupted = False  # a callback asked the wait to end (`interrupt`)
        self.clocks: list[Clock] = []

    def open(self) -> _Poll:
        """The poll set, made (with the pipe) on first use: before anything can wake a wait."""
        if self._poll is None:
            poll = _Poll()
            wake_r, wake_w = os.pipe()
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)  # a full pipe already wakes: never block a writer
            poll.register(wake_r)
            self._callbacks[wake_r] = None
            with self._wake_lock:
                self._poll, self._wake_r, self._wake_w = poll, wake_r, wake_w
        return self._poll

    @property
    def wake_fd(self) -> int:
        """The write end of the wakeup pipe (for signal.set_wakeup_fd)."""
        self.open()
        return self._wake_w

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        if fd in self._callbacks:
            raise KeyError(f"{fd} is already watched")
        (self._poll or self.open()).register(fd)
        self._callbacks[fd] = callback

    def unwatch(self, fd: int) -> None:
        assert self._poll is not None
        del self._callbacks[fd]
        self._poll.unregister(fd)

    def wake(self) -> None:
        """End the current (or next) wait, from another thread.  (Before the
        first wait, or after `close`, nobody waits: nothing to do.)"""
        with self._wake_lock, contextlib.suppress(BlockingIOError):  # full: a wake is pending anyway
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")

    def interrupt(self) -> None:
        """From a callback: end the wait it runs in as a signal would (the
        waiter has something to look at: a token back in a job pool)."""
        self._interrupted = True

    def due(self, now: float) -> float | None:
        """Run the clocks; the earliest time one is next due (None: none is)."""
        soonest: float | None = None
        for clock in self.clocks:
            at = clock(now)
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        return soonest

    def wait(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for a watched descriptor (and run its
        callback) or a wake; True if a signal woke it (its handler has
        something to say: `signal.set_wakeup_fd` writes the signal's number,
        `wake` a zero), or a callback called `interrupt`."""
        signalled = False
        ready = (self._poll or self.open()).wait(timeout)
        callbacks = self._callbacks
        # (each callback as watched when the wait returned: one run before may
        # have unwatched a descriptor, and another been watched under its number)
        for fd, callback in [(fd, callbacks.get(fd, _GONE)) for fd in ready]:
            if callbacks.get(fd, _GONE) is not callback:
                continue  # unwatched by a callback run just before (its stage ended)
            if callback is None:
                with contextlib.suppress(BlockingIOError):
                    while data := os.read(self._wake_r, 512):
                        signalled = signalled or any(data)
            elif callback is not _GONE:
                callback()
        if self._interrupted:
            self._interrupted = False
            return True
        return signalled

    def close(self) -> None:
        """Let go of the poll set and the pipe (a later wait makes new ones)."""
        if self._poll is not None:
            with self._wake_lock:
                self._poll.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._poll = None
                self._callbacks = {}
                self._wake_r = self._wake_w = -1


def _gone() -> None:  # (a marker: a descriptor no longer watched)
    pass


_GONE: Callable[[], None] = _gone


class _Poll:
    """Readiness to read of a set of descriptors: epoll where there is one,
    else poll (macOS: its `select.poll` works on pipes)."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = select.poll() if self._epoll is None else None

    def register(self, fd: int) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            assert self._poll is not None
            self._poll.register(fd, select.POLLIN)

    def unregister(self, fd: int) -> None:
        (self._epoll or self._poll).unregister(fd)  # type: ignore[union-attr]

    def wait(self, timeout: float) -> list[int]:
        """The descriptors ready (or hung up), after at most `timeout` seconds."""
        timeout = max(timeout, 0.0)  # (rounded up to the millisecond: a clock is never run early)
        if self._epoll is not None:
            if _nearwake is not None:
                return _nearwake.wait(self._epoll.fileno(), timeout)
            return [fd for fd, _ in self._epoll.poll(timeout)]
        assert self._poll is not None
        return [fd for fd, _ in self._poll.poll(math.ceil(timeout * 1000))]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
