"""The build loop's one wait (build/executors/poller.py): what ends it."""

from __future__ import annotations

import functools
import os

from helpers import HANG_GUARD_S

from pivotbuild.build.executors.poller import Poller


def test_a_callback_that_interrupts_ends_the_wait() -> None:
    poller = Poller()
    r, w = os.pipe()
    try:

        def interrupting() -> None:
            os.read(r, 1)
            poller.interrupt()

        poller.watch(r, interrupting)
        os.write(w, b"x")
        assert poller.wait(HANG_GUARD_S) is True  # (without the interrupt: False, after the whole wait)
        os.write(w, b"x")
        poller.unwatch(r)
        poller.watch(r, functools.partial(os.read, r, 1))
        assert poller.wait(0.05) is False  # a callback alone does not end it as a signal
    finally:
        poller.close()
        os.close(r)
        os.close(w)
