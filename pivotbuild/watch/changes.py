"""Where watch mode hears about changed files: a `ChangeSource`.

`Watchfiles` is the real one: watchfiles' notifier (inotify on Linux, the
native API elsewhere) on the directories the build reads, recursively, in a
thread of its own that hands each debounced batch of changed paths to the
watch loop.  Tests of the loop drive it with a source of their own
(tests/test_watch_loop.py) instead.

The notifier is watchfiles' `RustNotify`, the object `watchfiles.watch()`
itself drives, used directly for one reason: it is in place (every directory
subscribed) when its constructor returns, so watch mode says it is watching
only once a change would be seen.  (`watch()`, a generator, subscribes only
on its first iteration, in the thread that iterates it.)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

Sink = Callable[[frozenset[str]], None]

# How long the notifier's thread waits for a change before it looks at its
# stop switch (ms): the longest a re-aimed or closed source lingers.
_TIMEOUT_MS = 500
# How often the notifier looks for new events (ms, watchfiles' `step`):
# while nothing is pending, and while a quiet period is being waited out (its
# grain).  Each look wakes a thread: every 20 ms costs an idle watcher about
# 0.4% of a core here, every 5 ms 1%.
_IDLE_STEP_MS = 20
_BUSY_STEP_MS = 5


class ChangeSource(Protocol):
    def watch(self, roots: Sequence[str], sink: Sink) -> None:
        """Watch `roots` (directories, recursively) from now on, instead of
        what was watched before; each batch of changed paths (absolute,
        normalised) goes to `sink`, from any thread.  Raises OSError if a
        root cannot be watched."""
        ...

    def close(self) -> None:
        """Stop watching."""
        ...


class Watchfiles:
    """Changes from watchfiles.  `debounce_ms`: a batch is handed on once no
    new change came for that long, or at the latest ten times that after its
    first change (at least half a second), so a stage writing without pause
    cannot hold back an edit for long.

    The quiet period is kept here, not by watchfiles' `step` (the time it
    waits for more changes, and also how often it looks for them): with a
    step of 50 ms a change was handed on 50 to 100 ms after it was made;
    looking every 20 ms, and every 5 ms while waiting out the quiet period
    here, 55 to 80.  (benchmarks/watch_latency.py)"""

    def __init__(self, debounce_ms: int) -> None:
        self.quiet_s = max(debounce_ms, 0) / 1000
        self.longest_s = max(10 * self.quiet_s, 0.5)
        self._roots: tuple[str, ...] = ()
        self._stop: threading.Event | None = None

    def watch(self, roots: Sequence[str], sink: Sink) -> None:
        wanted = tuple(sorted(set(roots)))
        if wanted == self._roots and self._stop is not None:
            return
        from watchfiles._rust_notify import RustNotify  # (see the module's docstring)

        try:
            notify = RustNotify(list(wanted), False, False, 300, True, True)
        except (OSError, RuntimeError) as exc:  # watchfiles raises its notify errors as OSError or RuntimeError
            raise OSError(f"cannot watch {', '.join(wanted)}: {exc}") from exc
        stop = threading.Event()
        threading.Thread(target=self._follow, args=(notify, stop, sink), name="watchfiles", daemon=True).start()
        # The new notifier is in place before the old one stops: no change falls between.
        self.close()
        self._roots, self._stop = wanted, stop

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
            self._roots = ()

    def _follow(self, notify: Any, stop: threading.Event, sink: Sink) -> None:
        pending: set[str] = set()
        first = quiet_until = 0.0
        with notify:
            while not stop.is_set():
                if pending:
                    step, wait_ms = _BUSY_STEP_MS, max(int((quiet_until - time.monotonic()) * 1000), 1)
                else:
                    step, wait_ms = _IDLE_STEP_MS, _TIMEOUT_MS
                raw = notify.watch(step, step, wait_ms, stop)
                now = time.monotonic()
                if isinstance(raw, set) and raw:
                    if not pending:
                        first = now
                    pending.update(os.path.normpath(path) for _change, path in raw)
                    quiet_until = now + self.quiet_s
                if pending and (now >= quiet_until or now - first >= self.longest_s) and not stop.is_set():
                    sink(frozenset(pending))
                    pending = set()
