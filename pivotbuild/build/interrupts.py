"""Ctrl-C, SIGTERM and SIGHUP while the build loop runs on the main thread.

The loop's thread also runs the local executor: it starts the stages' processes
and follows their ends.  A KeyboardInterrupt raised in the middle of that
(between starting a process and holding its group, or between a stage's end
and its result) could lose a stage, so while the loop is in the executor's
code (`deferring`) the handler only notes the signal (`caught`), and the
loop stops at its next step.  Elsewhere (deciding, recording) it raises at
once, as Python's own handler does.  The signal also wakes the loop's wait:
the C-level handler writes to the poller's wakeup pipe (`signal.set_wakeup_fd`),
which it would otherwise not notice when the signal is delivered to another
thread (PEP 475 retries the wait).

Only handlers that raise KeyboardInterrupt (`signal.default_int_handler`,
which the CLI also installs for SIGTERM, and for SIGHUP unless it is
ignored: cli/running.py) are replaced, and only for the loop.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from pivotbuild.build.executors.poller import Poller

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Signals:
    def __init__(self) -> None:
        self.deferring = False
        self.caught = False

    @contextlib.contextmanager
    def caught_in(self, poller: Poller) -> Iterator[None]:
        """Handle the signals as above while this block runs (on the main thread
        only: elsewhere a signal is not ours to see, and Engine.cancel stops us)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        ours = [sig for sig in _SIGNALS if signal.getsignal(sig) is signal.default_int_handler]
        taken = {sig: signal.signal(sig, self._handler) for sig in ours}
        if not taken:
            yield
            return
        previous = signal.set_wakeup_fd(poller.wake_fd, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)
            for sig, handler in taken.items():
                signal.signal(sig, handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if not self.deferring:
            raise KeyboardInterrupt
        self.caught = True
