"""The standby (build/run.py `_arm`, local.py `stand_by`, _clonespawn.c's gate,
_nearwake.c's release): the next stage's process made ready while every
place is taken, held before its exec, and let go the moment a running stage
exits well.  What a user must never notice: more stages running than -j
allows, a stage started after a failure, an output emptied by a stage that
never ran, a process left behind, a stage's lines before its start."""

from __future__ import annotations

import ast
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PIVOTBUILD, Project
from helpers import HANG_GUARD_S, events, finished, wait_until

from pivotbuild.build.executors import poller, spawn


@pytest.fixture
def clonespawn() -> Any:
    if spawn._clonespawn is None:
        pytest.skip("_clonespawn was not built at install (test_the_clone_is_built_here_where_a_c_compiler_is)")
    return spawn._clonespawn


def _held_touch(clonespawn: Any, path: Path) -> tuple[int, Any, socket.socket]:
    """`touch path`, cloned and held at its gate: (pid, block, our end)."""
    child_end, ours = socket.socketpair()
    try:
        pid, block = clonespawn.start(
            "/usr/bin/env", None, ["env", "touch", str(path)], dict(os.environ), True, [], None, 0, 0, None,
            child_end.fileno(), ours.fileno(),
        )  # fmt: skip
    finally:
        child_end.close()
    return pid, block, ours


def _exit_status(pid: int) -> int:
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the held child {pid} did not end")


def test_a_held_child_runs_its_program_only_when_its_gate_says_go(clonespawn: Any, tmp_path: Path) -> None:
    made = tmp_path / "made"
    pid, block, ours = _held_touch(clonespawn, made)
    time.sleep(0.2)
    assert not made.exists()  # (held: its program not started)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    ours.send(b"g")
    assert _exit_status(pid) == 0
    assert made.exists()
    assert clonespawn.outcome(block) == (0, False)
    ours.close()


@pytest.mark.parametrize("how", ["told to end", "its gate closed"])
def test_a_held_child_told_anything_else_or_left_ends_without_its_program(
    clonespawn: Any, tmp_path: Path, how: str
) -> None:
    """Anything but 'g' ends it before its exec; so does our end of the gate
    closing (as at our exit), which needs the child not to hold a copy of it."""
    made = tmp_path / "made"
    pid, block, ours = _held_touch(clonespawn, made)
    if how == "told to end":
        ours.send(b"x")
    ours.close()
    assert _exit_status(pid) == 127
    assert clonespawn.outcome(block)[0] == errno.ECANCELED
    assert not made.exists()


# Run in a process of its own: the waiting thread and its standby are the process's.
_LET_GO = """
import os, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from test_poller import _sleeping_in_wait
from pivotbuild.build.executors import _clonespawn, _nearwake as near
tmp = sys.argv[2]

def held(name):
    child_end, ours = socket.socketpair()
    pid, block = _clonespawn.start(
        "/usr/bin/env", None, ["env", "touch", f"{tmp}/{name}"], dict(os.environ), True, [], None, 0, 0, None,
        child_end.fileno(), ours.fileno())
    child_end.close()
    return pid, ours.detach()

def exists_within(name, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(f"{tmp}/{name}"):
            return True
        time.sleep(0.002)
    return False

def settle(pid):
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

thread, w, seen, r = _sleeping_in_wait(near, 60.0)  # (the waiting thread starts at a first wait)
found = {}
out = f"{tmp}/out".encode()
open(f"{tmp}/out", "w").close()

# A stage that exits 0 with its outputs: the standby goes, before anyone claims it.
stage = subprocess.Popen(["sleep", "0.2"])
standby, gate = held("a")
near.arm(gate, [(stage.pid, out + b"\\0")])
found["held before"] = os.path.exists(f"{tmp}/a")
found["went at the exit"] = exists_within("a", 30)
found["went"] = near.went()
exited = time.monotonic()
found["stage reaped by its owner"] = stage.wait()
at = near.claim()
found["let go before the claim"] = 0 < at <= exited + 0.001
found["standby"] = settle(standby)

# A stage that fails, or leaves a declared output unmade: held until claimed.
for name, command, outs in [("b", ["sh", "-c", "exit 3"], out), ("c", ["true"], f"{tmp}/never".encode())]:
    stage = subprocess.Popen(command)
    standby, gate = held(name)
    near.arm(gate, [(stage.pid, outs + b"\\0")])
    stage.wait()
    found[name + " held"] = not exists_within(name, 0.3) and not near.went()
    found[name + " claim"] = near.claim() > 0
    found[name + " after the claim"] = exists_within(name, 30)
    found[name + " standby"] = settle(standby)

# A stage outside the slots: held; then cancelled.
stage = subprocess.Popen(["true"])
standby, gate = held("d")
near.arm(gate, [])
stage.wait()
found["d held"] = not exists_within("d", 0.3)
found["d cancelled"] = near.cancel()
found["d standby"] = settle(standby)
found["d never ran"] = not os.path.exists(f"{tmp}/d")
found["nothing to cancel"] = near.cancel()
os.write(w, b"x")
thread.join(30)
print(repr(found))
"""


def test_the_waiting_thread_lets_the_standby_go_at_a_clean_exit_of_a_slot_and_no_other(tmp_path: Path) -> None:
    if poller._nearwake is None or spawn._clonespawn is None:
        pytest.skip("the extensions were not built at install (test_the_near_wake_is_built_here_...)")
    done = subprocess.run(
        [sys.executable, "-c", _LET_GO, str(Path(__file__).parent), str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = ast.literal_eval(done.stdout)
    assert found == {
        "held before": False,
        "went at the exit": True,
        "went": True,
        "stage reaped by its owner": 0,
        "let go before the claim": True,
        "standby": 0,
        "b held": True,
        "b claim": True,
        "b after the claim": True,
        "b standby": 0,
        "c held": True,
        "c claim": True,
        "c after the claim": True,
        "c standby": 0,
        "d held": True,
        "d cancelled": True,
        "d standby": 127,
        "d never ran": True,
        "nothing to cancel": False,
    }


# -- end to end -----------------------------------------------------------------------------------


def _stamping(names: list[str], body: str = "sleep 0.02", first: str = "") -> str:
    """Stages NAME that log `NAME start|end TIME` to times.log around `body`, then write NAME.out."""
    blocks = []
    for name in names:
        # (one write a line: lines of two stages appended at once stay whole)
        stamp = "python3 -c 'import sys, time; sys.stdout.write(\"%s %s %r\\n\" % (*sys.argv[1:], time.time()))' "
        stamp += name
        blocks.append(
            f"stage {name}:\n    outs: {name}.out\n    run:\n"
            f"        {stamp} start >> times.log\n        {first}\n        {body}\n"
            f"        {stamp} end >> times.log\n        echo {name} > $@\n"
        )
    return "\n".join(blocks)


def _most_at_once(p: Project) -> int:
    moments = []
    for line in (p.root / "times.log").read_text().splitlines():
        _, word, at = line.split()
        moments.append((float(at), 0 if word == "end" else 1))  # (an end before a start at the same moment)
    running = most = 0
    for _, delta in sorted(moments):
        running += 1 if delta else -1
        most = max(most, running)
    return most


@pytest.mark.parametrize("jobs", [1, 2])
def test_more_ready_stages_than_places_never_run_more_than_j_at_once(project: Project, jobs: int) -> None:
    names = [f"s{i:02d}" for i in range(40)]
    project.pivotfile(_stamping(names))
    r = project.run(f"-j{jobs}", "--json")
    assert r.code == 0, r
    assert set(finished(r)) == set(names)
    assert _most_at_once(project) <= jobs
    starts = [e["stage"] for e in events(r) if e["event"] == "stage_started"]
    assert sorted(starts) == names  # each said to start once


def test_a_stage_that_fails_starts_nothing_after_it_and_leaves_no_output_emptied(project: Project) -> None:
    """Without -k, once a stage fails no stage starts; the one made ready to
    follow it (its output already opened) never runs, and every output not
    rebuilt holds what it held before."""
    names = [f"s{i:02d}" for i in range(30)]
    project.pivotfile(_stamping(names, body="true"))
    assert project.run("-j2").code == 0
    before = {n: (project.root / f"{n}.out").read_text() for n in names}
    (project.root / "times.log").unlink()
    # (the stage that finds times.log with 8 lines or more, the fourth or so to start, fails: not one by
    # name, which the durations of the build before may put last)
    failing = _stamping(names, body="sleep 0.02", first='test "$(wc -l < times.log)" -lt 8 || exit 7')
    project.pivotfile(failing.replace("        echo s", "        echo new-s"))
    r = project.run("-j2", "--json")
    assert r.code == 1, r
    done = finished(r)
    assert any(status == "failed" for status, _ in done.values())
    assert any(status == "cancelled" for status, _ in done.values())  # (the build stopped early)
    for name in names:
        text = (project.root / f"{name}.out").read_text()
        if done[name][0] == "ran":
            assert text == f"new-{name}\n"
        else:
            assert text == before[name], (name, done[name])
    started = {e["stage"] for e in events(r) if e["event"] == "stage_started"}
    logged = {line.split()[0] for line in (project.root / "times.log").read_text().splitlines()}
    assert logged == started  # (nothing ran unannounced)


def test_an_interrupted_build_leaves_no_stage_process_behind_held_or_running(project: Project) -> None:
    marker = "pv-standby-marker"
    names = [f"s{i:02d}" for i in range(60)]
    project.pivotfile(_stamping(names, body=f"sleep 0.05 # {marker}"))
    build = subprocess.Popen([*PIVOTBUILD, "-j2"], cwd=project.root, start_new_session=True)
    try:
        wait_until((project.root / "s05.out").exists, HANG_GUARD_S, "a few stages to run")
        build.send_signal(signal.SIGINT)
        code = build.wait(HANG_GUARD_S)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert code == 130
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout.split()
    assert left == []
    for name in names:
        out = project.root / f"{name}.out"
        assert not out.exists() or out.read_text() == f"{name}\n", name


def test_what_a_stage_prints_is_reported_after_its_start(project: Project) -> None:
    """Each stage prints at once, and leaves an output large enough to be
    hashed on a thread: the next stage, let go at its exit, prints before
    the loop has its result and says the next one started."""
    names = [f"s{i:02d}" for i in range(40)]
    project.pivotfile(
        "".join(
            f"stage {name}:\n    outs: {name}.out\n    run:\n"
            '        echo "said by $PIVOT_STAGE" >&2\n        head -c 6000000 /dev/zero > $@\n'
            for name in names
        )
    )
    r = project.run("-j2", "--json")
    assert r.code == 0, r
    seen: set[str] = set()
    lines = 0
    for e in events(r):
        if e["event"] == "stage_started":
            seen.add(e["stage"])
        elif e["event"] == "log" and e["line"].startswith("said by"):
            lines += 1
            assert e["stage"] in seen, e
            assert e["line"] == f"said by {e['stage']}"
    assert lines == len(names)
