"""lifeline: the watchdog kills the process groups still held when the build's
end of the pipe closes (as it does when pivotbuild is killed), and no other."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import read_pid, run_script, wait_gone

from pivotbuild.build.executors.lifeline import Lifeline


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Groups:
    """Shells in process groups of their own, as runner.py starts stages, each
    running `sleep` in the background (its pid in NAME.pid) and waiting for it.
    Whatever is left of them is killed afterwards."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, prefix: str = "") -> tuple[subprocess.Popen[bytes], int]:
        """The shell, and the pid of its child."""
        script = f"{prefix}sleep 300 & echo $! > {name}.pid; wait"
        proc = subprocess.Popen(["/bin/sh", "-c", script], cwd=self.where, start_new_session=True)
        self.procs.append(proc)
        return proc, read_pid(self.where / f"{name}.pid")

    def clean_up(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def groups(tmp_path: Path) -> Iterator[Groups]:
    g = Groups(tmp_path)
    yield g
    g.clean_up()


def close_while_reaping(lifeline: Lifeline, proc: subprocess.Popen[bytes]) -> None:
    """Close the lifeline (as pivotbuild's death does) while reaping the stage's
    shell, as init would once pivotbuild is gone."""
    closing = threading.Thread(target=lifeline.close)
    closing.start()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    closing.join()


def test_a_held_group_dies_when_the_lifeline_closes(groups: Groups) -> None:
    shell, child = groups.start("stage")
    lifeline = Lifeline()
    lifeline.hold(shell.pid)
    close_while_reaping(lifeline, shell)
    assert wait_gone(shell.pid), "the stage's shell survived"
    assert wait_gone(child), "the stage's child survived"
    assert shell.returncode == -signal.SIGTERM  # asked first


def test_a_group_ignoring_sigterm_is_killed(groups: Groups) -> None:
    shell, child = groups.start("stubborn", prefix="trap '' TERM; ")
    lifeline = Lifeline()
    lifeline.hold(shell.pid)
    close_while_reaping(lifeline, shell)
    assert wait_gone(shell.pid), "the stage's shell survived"
    assert wait_gone(child), "the stage's child survived"
    assert shell.returncode == -signal.SIGKILL


def test_a_released_group_is_left_alone(groups: Groups) -> None:
    kept, kept_child = groups.start("kept")
    other, _ = groups.start("other")
    lifeline = Lifeline()
    lifeline.hold(kept.pid)
    lifeline.hold(other.pid)
    lifeline.release(kept.pid)
    close_while_reaping(lifeline, other)
    assert wait_gone(other.pid)
    assert kept.poll() is None and alive(kept.pid) and alive(kept_child)


def test_a_group_held_after_another_was_released_dies_and_the_released_one_is_left(groups: Groups) -> None:
    # The second hold takes the place the first group left in the watchdog's table.
    first, first_child = groups.start("first")
    second, second_child = groups.start("second")
    lifeline = Lifeline()
    lifeline.hold(first.pid)
    lifeline.release(first.pid)
    lifeline.hold(second.pid)
    close_while_reaping(lifeline, second)
    assert wait_gone(second.pid), "the stage's shell survived"
    assert wait_gone(second_child), "the stage's child survived"
    assert first.poll() is None and alive(first.pid) and alive(first_child)


def test_every_group_held_dies(groups: Groups) -> None:
    started = [groups.start(f"stage{i}") for i in range(5)]
    lifeline = Lifeline()
    for shell, _ in started:
        lifeline.hold(shell.pid)
    lifeline.release(started[2][0].pid)
    lifeline.hold(started[2][0].pid)
    closing = threading.Thread(target=lifeline.close)
    closing.start()
    for shell, _ in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            shell.wait(timeout=15)
    closing.join()
    for shell, child in started:
        assert wait_gone(shell.pid), "a stage's shell survived"
        assert wait_gone(child), "a stage's child survived"


def test_a_lifeline_never_held_starts_no_watchdog() -> None:
    before = {p.pid for p in psutil.Process().children()}
    lifeline = Lifeline()
    lifeline.release(12345)
    assert {p.pid for p in psutil.Process().children()} == before
    lifeline.close()


# A build killed in the instant a stage starts: the spawn has returned the
# stage's pid but the build never got to `hold` it.  The stages run `SCRIPT`
# in `where`; `released` ones are held and released first (finished, as far as
# the build knows, with something left running).
_KILLED_WHILE_STARTING = """
import os, signal, sys, time
from pivotbuild.build.executors.lifeline import VARIABLE, Lifeline
from pivotbuild.build.executors.spawn import Starter, devnull

starter = Starter()
lifeline = Lifeline(starter)
for name in sys.argv[1:]:
    expected = lifeline.expect()
    assert expected is not None
    script = "{prefix}sleep 300 & echo $! > " + name + ".pid; wait"
    env = {**os.environ, VARIABLE: expected[1]}
    child = starter.start(("/bin/sh", "-c", script), None, env, stdin=devnull(), stdout=devnull(), stderr=devnull())
    print(child.pid, flush=True)
    if name.startswith("released"):
        lifeline.hold(child.pid, expected)
        lifeline.release(child.pid)
    while not (os.path.exists(name + ".pid") and open(name + ".pid").read().endswith("\\n")):
        time.sleep(0.01)  # (its child started: the kill is not before it)
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_while_starting(where: Path, names: list[str], prefix: str = "") -> dict[str, tuple[int, int]]:
    """Run the build above; each stage's (shell, child) pids."""
    proc = run_script(_KILLED_WHILE_STARTING.replace("{prefix}", prefix), names, where)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    shells = [int(line) for line in proc.stdout.split()]
    return {name: (shell, read_pid(where / f"{name}.pid")) for name, shell in zip(names, shells, strict=True)}


def kill_left(pids: dict[str, tuple[int, int]]) -> None:
    for shell, child in pids.values():
        for pid in (shell, child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("", id="its-group"),
        pytest.param("setsid ", id="a-child-in-a-session-of-its-own"),
    ],
)
def test_a_stage_started_as_the_build_is_killed_dies_before_it_is_held(tmp_path: Path, prefix: str) -> None:
    # Its child in a session of its own is found too: it carries the stage's value.
    pids = killed_while_starting(tmp_path, ["stage"], prefix=prefix)
    try:
        shell, child = pids["stage"]
        assert wait_gone(shell), "the stage's shell survived the build"
        assert wait_gone(child), "the stage's child survived the build"
    finally:
        kill_left(pids)


def test_only_the_stage_being_started_is_found_by_its_environment(tmp_path: Path) -> None:
    # The released stage's shell still runs (the build had done with it): it
    # carries the same token but another number, and is left alone.
    pids = killed_while_starting(tmp_path, ["released", "stage"])
    try:
        assert wait_gone(pids["stage"][0]) and wait_gone(pids["stage"][1]), "the stage being started survived"
        time.sleep(0.5)  # (the watchdog has done by now: the stage's group was all it had to kill)
        assert all(alive(pid) for pid in pids["released"]), "a stage the build had released was killed"
    finally:
        kill_left(pids)


# A stage that has closed its copy of the build's end of the pipe but not yet
# exec'd when the build dies (a start through Popen closes every descriptor
# before its exec): the end of file comes while its environment is still the
# build's, and its own shows up a moment later.
_KILLED_BEFORE_EXEC = """
import os, signal, sys, time
from pivotbuild.build.executors.lifeline import VARIABLE, Lifeline

lifeline = Lifeline()
expected = lifeline.expect()
assert expected is not None
env = {**os.environ, VARIABLE: expected[1]}
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 65536)
    time.sleep(0.15)
    os.execve("/bin/sleep", ["sleep", "300"], env)
print(pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_stage_that_execs_after_the_build_is_killed_is_found_and_dies(tmp_path: Path) -> None:
    proc = run_script(_KILLED_BEFORE_EXEC, [], tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    stage = int(proc.stdout)
    try:
        assert wait_gone(stage), "the stage that exec'd after the build died survived it"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(stage, signal.SIGKILL)
