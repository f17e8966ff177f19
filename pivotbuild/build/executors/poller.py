"""The build loop's one wait: a selector (epoll on Linux) over the descriptors
of everything running (each stage's pipes, a pidfd while its exit is
awaited), a wakeup pipe other threads and signal handlers write to, and the
clocks of what must happen at a given time (a stage's timeout, the end of a
kill's grace).

Everything watched is handled in the thread that waits, so the local
executor needs no thread of its own: a stage costs the build a few system
calls, not a handoff between threads per event (see docs/performance.md).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections.abc import Callable

Clock = Callable[[float], float | None]  # given the time, acts on what is due; says when it is next due


class Poller:
    """`watch` a descriptor with a callback run (in the waiting thread) when it
    is readable; `clocks` are run before each wait; `wake` ends a wait from any
    thread or a signal handler.  The selector and the pipe are made on first use."""

    def __init__(self) -> None:
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()  # a wake never writes to a descriptor `close` let go
        self._interrupted = False  # a callback asked the wait to end (`interrupt`)
        self.clocks: list[Clock] = []

    def open(self) -> selectors.BaseSelector:
        """The selector, made (with the pipe) on first use: before anything can wake a wait."""
        if self._selector is None:
            selector = selectors.DefaultSelector()
            wake_r, wake_w = os.pipe()
            os.set_blocking(wake_r, False)
            os.set_blocking(wake_w, False)  # a full pipe already wakes: never block a writer
            selector.register(wake_r, selectors.EVENT_READ, None)
            with self._wake_lock:
                self._selector, self._wake_r, self._wake_w = selector, wake_r, wake_w
        return self._selector

    @property
    def wake_fd(self) -> int:
        """The write end of the wakeup pipe (for signal.set_wakeup_fd)."""
        self.open()
        return self._wake_w

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.open().register(fd, selectors.EVENT_READ, callback)

    def unwatch(self, fd: int) -> None:
        assert self._selector is not None
        self._selector.unregister(fd)

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
        selector = self.open()
        ready = selector.select(max(timeout, 0.0))
        watched = selector.get_map()
        for key, _ in ready:
            if watched.get(key.fd) is not key:
                continue  # unwatched by a callback run just before (its stage ended)
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while data := os.read(self._wake_r, 512):
                        signalled = signalled or any(data)
            else:
                key.data()
        if self._interrupted:
            self._interrupted = False
            return True
        return signalled

    def close(self) -> None:
        """Let go of the selector and the pipe (a later wait makes new ones)."""
        if self._selector is not None:
            with self._wake_lock:
                self._selector.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._selector = None
                self._wake_r = self._wake_w = -1
