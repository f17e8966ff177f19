"""The build loop's signals (build/interrupts.py): Ctrl-C, SIGTERM and SIGHUP
are only noted while the loop is in the executor's code, so that no stage is
lost between its start and its result, and raise KeyboardInterrupt elsewhere;
a signal the user ignores (`nohup`) is left ignored."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from pivotbuild.build.executors.poller import Poller
from pivotbuild.build.interrupts import Signals

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture
def as_the_cli_sets_them() -> Iterator[None]:
    """The handlers `pivotbuild` runs a build under (cli/running.py): each of
    these signals raises KeyboardInterrupt, as Ctrl-C does."""
    was = {sig: signal.signal(sig, signal.default_int_handler) for sig in STOPPING}
    try:
        yield
    finally:
        for sig, handler in was.items():
            signal.signal(sig, handler)


@pytest.fixture
def poller() -> Iterator[Poller]:
    p = Poller()
    p.open()
    try:
        yield p
    finally:
        p.close()


@pytest.mark.parametrize("sig", STOPPING, ids=lambda s: signal.Signals(s).name)
def test_a_stopping_signal_in_the_executor_is_noted_not_raised(
    sig: int, as_the_cli_sets_them: None, poller: Poller
) -> None:
    signals = Signals()
    with signals.caught_in(poller):
        signals.deferring = True
        try:
            os.kill(os.getpid(), sig)  # (delivered to this thread before kill returns)
        except KeyboardInterrupt:
            pytest.fail(f"{signal.Signals(sig).name} raised in the executor's code, where a stage could be lost")
        signals.deferring = False
        assert signals.caught
        assert poller.wait(30.0) is True  # and the loop's wait is woken by it at once
    assert signal.getsignal(sig) is signal.default_int_handler  # given back after the loop


@pytest.mark.parametrize("sig", STOPPING, ids=lambda s: signal.Signals(s).name)
def test_a_stopping_signal_elsewhere_in_the_loop_raises_at_once(
    sig: int, as_the_cli_sets_them: None, poller: Poller
) -> None:
    signals = Signals()
    with signals.caught_in(poller), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), sig)
    assert not signals.caught


def test_an_ignored_sighup_stays_ignored(poller: Poller) -> None:
    was = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with Signals().caught_in(poller):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # (nothing happens)
    finally:
        signal.signal(signal.SIGHUP, was)
