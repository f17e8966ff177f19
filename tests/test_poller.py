"""The build loop's one wait (build/executors/poller.py): what ends it."""

from __future__ import annotations

import ast
import functools
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import HANG_GUARD_S

from pivotbuild.build.executors import poller
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


def test_the_near_wake_is_built_here_where_a_c_compiler_is() -> None:
    """`_nearwake` is built at install where the machine has a C compiler
    (hatch_build.py), unless PIVOTBUILD_NO_EXTENSION=1; without it the loop
    waits in select.epoll's own wait."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]  # (hatch_build's)
    if shutil.which(compiler) is not None and os.environ.get("PIVOTBUILD_NO_EXTENSION") != "1":
        assert poller._nearwake is not None, f"{compiler} is here, but _nearwake was not built at install"


@pytest.fixture
def near() -> Any:
    if poller._nearwake is None:
        pytest.skip("_nearwake was not built at install (test_the_near_wake_is_built_here_where_a_c_compiler_is)")
    return poller._nearwake


def _sleeping_in_wait(near: Any, seconds: float) -> tuple[threading.Thread, int, dict[str, Any], int]:
    """A thread sleeping in `near.wait` on a pipe (for at most `seconds`, or
    until the pipe's write end, returned, is written); what it saw is in the dict."""
    r, w = os.pipe()
    epoll = select.epoll()
    epoll.register(r, select.EPOLLIN)
    seen: dict[str, Any] = {}
    asleep = threading.Event()

    def sleeper() -> None:
        seen["tid"] = threading.get_native_id()
        seen["mask"] = os.sched_getaffinity(0)
        asleep.set()
        try:
            seen["ready"] = near.wait(epoll.fileno(), seconds)
            seen["after"] = os.sched_getaffinity(0)
        finally:
            epoll.close()
            os.close(r)

    thread = threading.Thread(target=sleeper)
    thread.start()
    asleep.wait(HANG_GUARD_S)
    while "ready" not in seen and _state(seen["tid"]) not in "SD":  # (until it sleeps in the wait)
        time.sleep(0.001)
    return thread, w, seen, r


def _state(tid: int) -> str:
    try:
        return Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


def test_the_wait_returns_the_ready_descriptors_or_none_after_its_timeout(near: Any) -> None:
    thread, w, seen, r = _sleeping_in_wait(near, HANG_GUARD_S)
    os.write(w, b"x")
    thread.join(HANG_GUARD_S)
    os.close(w)
    assert seen["ready"] == [r]
    thread, w, seen, r = _sleeping_in_wait(near, 0.05)
    thread.join(HANG_GUARD_S)
    os.close(w)
    assert seen["ready"] == []


# Run in a process of its own: a thread of another test still asleep in a
# wait would make two sleepers, and the module moves neither then.
_MOVED = """
import os, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[1])
from test_poller import _sleeping_in_wait
from pivotbuild.build.executors import _nearwake as near
cores = os.sched_getaffinity(0)
child = subprocess.Popen(["sleep", "0.2"])  # (started before the wait, as the loop's stages are)
thread, w, seen, r = _sleeping_in_wait(near, 30.0)
deadline = time.monotonic() + 30.0
while near.moves() == 0 and time.monotonic() < deadline:  # (the exit seen by the module's thread)
    time.sleep(0.001)
while_asleep = os.sched_getaffinity(seen["tid"])
os.write(w, b"x")
thread.join(30.0)
child.wait()  # (reaped by its owner, as ever: the module reaps nothing)
seen_cores = [sorted(x) for x in (cores, while_asleep, seen["mask"], seen["after"], os.sched_getaffinity(0))]
print(repr((near.moves(), child.returncode, *seen_cores)))
"""


def test_a_thread_asleep_in_the_wait_is_moved_to_the_core_of_a_child_that_exits_then_gets_its_mask_back(
    near: Any,
) -> None:
    """The one use of `_nearwake`: while the loop sleeps, a child's exit moves
    it to the exiting child's core alone (so that it runs there as soon as the
    child is gone); as the wait returns it has its whole mask again, before
    it can start anything (a stage would inherit a single core).  Nothing
    else is moved, and the child is its owner's to reap."""
    done = subprocess.run(
        [sys.executable, "-c", _MOVED, str(Path(__file__).parent)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    moves, status, cores, while_asleep, before, after, main_after = ast.literal_eval(done.stdout)
    if len(cores) < 2:
        assert moves == 0 and while_asleep == cores  # (one core: nowhere to move it)
    else:
        assert moves == 1
        assert len(while_asleep) == 1 and set(while_asleep) <= set(cores)
        assert before == after == cores
    assert main_after == cores  # (the thread that was not waiting, never moved)
    assert status == 0
