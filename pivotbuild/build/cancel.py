"""A build's cancel switch, for whoever drives a long-lived engine: the watch
loop on Ctrl-C, the agent server's `cancel`, a Python caller's thread or
signal handler.  It is the `threading.Event` that `Engine.build` polls."""

from __future__ import annotations

import _thread
import threading


class CancelToken(threading.Event):
    """A `threading.Event` whose `cancel()` is safe from any thread and from a
    signal handler.  `Event.set` takes the event's lock, which a handler
    interrupting this very event's code on the main thread would wait for
    forever; so on the main thread `cancel()` stores a plain flag (which
    `is_set` reads at once) and leaves `set`, which wakes the waiters, to a
    new low-level thread (`_thread`: not even `threading`'s own locks)."""

    def __init__(self) -> None:
        super().__init__()
        self._requested = False

    def cancel(self) -> None:
        self._requested = True
        if threading.current_thread() is threading.main_thread():
            _thread.start_new_thread(self.set, ())
        else:
            self.set()

    def is_set(self) -> bool:
        return self._requested or super().is_set()

    def clear(self) -> None:
        self._requested = False
        super().clear()

    @property
    def cancelled(self) -> bool:
        return self.is_set()
