"""Killed builds, as a campaign: SIGKILL at seeded random moments of builds of
a 25-stage lattice, each followed by a build that must recover.

STATE.md promises that a build killed at any moment loses at most the stages
that were still running: the next build reruns those and only those. Each round
here edits a few sources (so part of the lattice is out of date), starts a
build with `--json` streamed to a file, kills it after a seeded number of
stages finished plus a seeded delay, and checks the build after it:

- it succeeds, and every output holds what the test computes it must;
- no stage the killed build reported finished runs again (a `stage_finished`
  event is written only after the stage's result is in the journal);
- `pivotbuild verify` and `pivotbuild -q` pass.

Stages log `start NAME PID` and `end NAME` to a file outside the project, so the
test knows which stages were running at the kill. Stages run in sessions of
their own; the build's lifeline (lifeline.py) kills those still running when
pivotbuild dies, and the test waits for that before the next build, failing if
a stage outlives the build.

`PIVOT_KILL_ROUNDS` (default 12) and `PIVOT_KILL_SEED` (default 20261203)
change the campaign; docs/reliability.md has the figures of a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import PIVOTBUILD, Project
from lattice import assert_outputs, edit_sources, write_lattice

WIDTH, DEPTH = 5, 5
ROUNDS = int(os.environ.get("PIVOT_KILL_ROUNDS", "12"))
SEED = int(os.environ.get("PIVOT_KILL_SEED", "20261203"))


@dataclass
class Log:
    """The stages' start and end markers, read from the log."""

    started: dict[str, int] = field(default_factory=dict)  # stage -> its shell's pid
    ended: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path) -> Log:
        log = cls()
        if path.exists():
            for line in path.read_text().splitlines():
                word = line.split()
                if word[0] == "start" and len(word) == 3:
                    log.started[word[1]] = int(word[2])
                elif word[0] == "end" and len(word) == 2:
                    log.ended.add(word[1])
        return log


def events(path: Path) -> list[dict[str, object]]:
    """The events a build wrote; a line the kill cut short is not one."""
    found = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            found.append(json.loads(line))
    return found


def finished(evs: list[dict[str, object]], *statuses: str) -> set[str]:
    return {str(e["stage"]) for e in evs if e["event"] == "stage_finished" and e["status"] in statuses}


def count_finished(path: Path) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    return text.count('"event": "stage_finished"')


def await_orphans(log_path: Path, timeout: float = 10) -> int:
    """Wait until the stages the dead build left running are gone, killed by
    its lifeline (the watchdog that outlives pivotbuild), without the test
    killing any; return how many were still alive when the wait began."""
    log = Log.read(log_path)
    left = [pid for name, pid in log.started.items() if name not in log.ended and _alive(pid)]
    deadline = time.monotonic() + timeout
    for pid in left:
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)  # not to leave it behind the failed test
                raise AssertionError(f"stage process {pid} outlived the killed build")
            time.sleep(0.01)
    return len(left)


def await_watchdog(build: int, timeout: float = 10) -> None:
    """Wait until the lifeline's watchdog of the build of pid `build` has exited
    (its token, its last argument, starts with that pid)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [
            p
            for p in psutil.process_iter(["cmdline"])
            if (cmd := p.info["cmdline"] or [])[-2:-1] == ["pivotbuild-lifeline"] and cmd[-1].startswith(f"{build}.")
        ]
        if not any(_alive(p.pid) for p in left):
            return
        assert time.monotonic() < deadline, "the killed build's watchdog did not finish"
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def killed_build(project: Project, tmp: Path, jobs: int, after: int, delay: float) -> tuple[Log, set[str], int]:
    """Start a build, SIGKILL it once `after` stages finished and `delay` more
    seconds passed; return the stages' log of that build, what it reported
    finished (ran or up to date), and how many stage processes were still
    alive after its death (its lifeline then killed them)."""
    log_path = tmp / "stages.log"
    log_path.unlink(missing_ok=True)
    ev_path = tmp / "killed.jsonl"
    env = {**os.environ, "NO_COLOR": "1"}
    with ev_path.open("wb") as out, (tmp / "killed.err").open("wb") as err:
        proc = subprocess.Popen(
            [*PIVOTBUILD, "--json", f"-j{jobs}"],
            cwd=project.root,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while count_finished(ev_path) < after and proc.poll() is None:
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.005)
        time.sleep(delay)
        assert proc.poll() is None, "the build ended before the kill: the campaign must kill it mid-build"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group, should anything be left in it
        # The watchdog has done once it exits: every stage it had to kill is
        # gone, those being started as the build died too (lifeline.py).
        await_watchdog(proc.pid)
        orphans = await_orphans(log_path)
    return Log.read(log_path), finished(events(ev_path), "ran", "skipped", "restored"), orphans


def test_builds_killed_at_random_moments_lose_only_the_running_stages(project: Project, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    log_path = tmp_path / "stages.log"
    write_lattice(project, WIDTH, DEPTH, log_path, rng)
    total = WIDTH * DEPTH
    stats = {"kills": 0, "running": 0, "rerun": 0, "finished_before_kill": 0, "orphans": 0}

    for round_ in range(ROUNDS):
        if round_:
            # A first-layer source too, so at least 15 stages (its cone) are to run.
            first = project.root / f"src/0_{rng.randrange(WIDTH)}.txt"
            first.write_text(first.read_text() + f"edit {round_}\n")
            edit_sources(project.root, WIDTH, DEPTH, rng, str(round_))
        # Up to date stages finish at once, so count from the first stage that must run.
        plan = project.run("-n", "--json")
        assert plan.code == 0, plan
        to_run = sum(1 for line in plan.out.splitlines() if json.loads(line).get("will_run"))
        up_to_date = total - to_run
        # Leave at least 8 stages (two waves of 20 ms naps or more, at -j3) to run
        # after the kill's countdown starts, so it lands mid-build.
        after = up_to_date + rng.randrange(to_run - 8)
        delay = rng.choice([0.0, 0.002, 0.01, 0.02, 0.03])
        jobs = rng.choice([1, 2, 2, 3])
        log, done, orphans = killed_build(project, tmp_path, jobs, after, delay)
        running = set(log.started) - done  # started, and no result recorded
        stats["kills"] += 1
        stats["orphans"] += orphans
        stats["running"] += len(running)
        stats["finished_before_kill"] += len(done)

        r = project.run("--json", "-j2")
        where = f"round {round_} (-j{jobs}, kill after {after} + {delay}s)"
        assert r.code == 0, (where, r)
        assert "Traceback" not in r.err, (where, r.err)
        ran = finished([json.loads(line) for line in r.out.splitlines()], "ran")
        assert not ran & done, f"{where}: stages that had finished ran again: {sorted(ran & done)}"
        rerun = ran & set(log.started)
        assert rerun <= running, (where, sorted(rerun), sorted(running))
        stats["rerun"] += len(rerun)

        assert_outputs(project.root, WIDTH, DEPTH, where)

        v = project.run("verify")
        assert v.code == 0, (where, v)
        q = project.run("-q")
        assert q.code == 0, (where, q)

    assert stats["kills"] == ROUNDS
    print(f"kill campaign (seed {SEED}): {stats}")


@pytest.mark.parametrize("jobs", [1, 3])
def test_a_build_killed_before_any_stage_finished_recovers(project: Project, tmp_path: Path, jobs: int) -> None:
    """The kill lands while the first stages run (or before: planning, locking)."""
    rng = random.Random(SEED + jobs)
    log_path = tmp_path / "stages.log"
    write_lattice(project, WIDTH, DEPTH, log_path, rng)
    log, done, _ = killed_build(project, tmp_path, jobs, 0, rng.choice([0.0, 0.05, 0.1]))
    running = set(log.started) - done
    r = project.run("--json", "-j2")
    assert r.code == 0, r
    ran = finished([json.loads(line) for line in r.out.splitlines()], "ran")
    assert not ran & done
    assert ran & set(log.started) <= running
    assert_outputs(project.root, WIDTH, DEPTH)
    assert project.run("verify").code == 0
    assert project.run("-q").code == 0
