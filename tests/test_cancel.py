"""A build's cancel switch (build/cancel.py): safe from any thread, and from a
signal handler that interrupts the main thread inside the event's own code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from pivotbuild.build.cancel import CancelToken


def test_cancel_from_another_thread_wakes_a_waiter() -> None:
    token = CancelToken()
    threading.Thread(target=token.cancel).start()
    assert token.wait(30)
    assert token.cancelled


def test_cancel_on_the_main_thread_is_seen_at_once() -> None:
    token = CancelToken()
    assert not token.is_set()
    token.cancel()
    assert token.is_set() and token.cancelled
    assert token.wait(30)
    token.clear()
    assert not token.is_set()


def test_cancel_from_a_signal_handler_while_the_main_thread_holds_the_event_lock() -> None:
    # A plain Event.set() in the handler would wait forever for the lock the
    # interrupted main thread holds (run apart, so that shows as a timeout).
    script = textwrap.dedent(
        """
        import os, signal
        from pivotbuild.build.cancel import CancelToken

        token = CancelToken()
        signal.signal(signal.SIGUSR1, lambda signum, frame: token.cancel())
        with token._cond:  # as if the signal came while the main thread was inside Event.wait or set
            os.kill(os.getpid(), signal.SIGUSR1)
            seen = token.is_set()
        print(seen, token.wait(30))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["True", "True"]
