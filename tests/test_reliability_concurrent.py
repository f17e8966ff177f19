"""Concurrent builds, as a campaign: three `pivotbuild` processes started at once
on one project, in rounds (a clean build, then builds after seeded edits).

STATE.md: two pivotbuild processes on one project never corrupt each other; the
second waits for the first, saying so. Every stage that must run first waits for
a gate file, which the test creates only once the two other builds have said
they are waiting: so one build holds the project while the others wait, every
round, whatever the machine's speed. Then:

- all three exit 0, and the two that waited said so on stderr;
- each stage that had to run ran exactly once over the three builds (the
  stages log to a file outside the project), and the waiters ran nothing;
- every output holds what the test computes it must; `pivotbuild -q` passes.

`PIVOT_CONCURRENT_ROUNDS` (default 4) and `PIVOT_CONCURRENT_SEED` change the
campaign; docs/reliability.md has the figures of a run.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import time
from pathlib import Path

from conftest import PIVOTBUILD, Project
from lattice import assert_outputs, edit_sources, write_lattice

WIDTH, DEPTH = 5, 4
BUILDS = 3
ROUNDS = int(os.environ.get("PIVOT_CONCURRENT_ROUNDS", "4"))
SEED = int(os.environ.get("PIVOT_CONCURRENT_SEED", "20261203"))
WAITING = "waiting for another pivotbuild"


def starts(log: Path) -> collections.Counter[str]:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(line.split()[1] for line in log.read_text().splitlines() if line.startswith("start "))


def test_three_concurrent_builds_run_each_stage_once(project: Project, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    log, gate = tmp_path / "stages.log", tmp_path / "go"
    write_lattice(project, WIDTH, DEPTH, log, rng, gate=gate)
    env = {**os.environ, "NO_COLOR": "1"}
    ran_total = 0

    for round_ in range(ROUNDS):
        where = f"round {round_}"
        if round_:
            edit_sources(project.root, WIDTH, DEPTH, rng, str(round_))
        gate.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        plan = project.run("-n", "--json")
        assert plan.code == 0, plan
        must_run = {e["stage"] for e in map(json.loads, plan.out.splitlines()) if e.get("will_run")}
        assert must_run, where

        procs, outs, errs = [], [], []
        for i in range(BUILDS):
            outs.append(tmp_path / f"b{i}.out")
            errs.append(tmp_path / f"b{i}.err")
            with outs[i].open("wb") as out, errs[i].open("wb") as err:
                jobs = rng.choice([1, 2, 3])
                procs.append(
                    subprocess.Popen(
                        [*PIVOTBUILD, "--json", f"-j{jobs}"], cwd=project.root, env=env, stdout=out, stderr=err
                    )
                )
        try:
            deadline = time.monotonic() + 60
            while sum(WAITING in e.read_text() for e in errs) < BUILDS - 1:
                assert time.monotonic() < deadline, (where, [e.read_text() for e in errs])
                assert all(p.poll() is None for p in procs), (where, [e.read_text() for e in errs])
                time.sleep(0.01)
            gate.touch()
            codes = [p.wait(timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()

        texts = [e.read_text() for e in errs]
        assert codes == [0] * BUILDS, (where, codes, texts)
        assert not any("Traceback" in t for t in texts), (where, texts)
        assert sum(WAITING in t for t in texts) == BUILDS - 1, (where, texts)
        counts = starts(log)
        assert set(counts) == must_run, (where, sorted(set(counts) ^ must_run))
        assert all(n == 1 for n in counts.values()), (where, {s: n for s, n in counts.items() if n > 1})
        for i, path in enumerate(outs):
            events = [json.loads(line) for line in path.read_text().splitlines()]
            ran = {e["stage"] for e in events if e["event"] == "stage_finished" and e["status"] == "ran"}
            if WAITING in texts[i]:
                assert not ran, (where, f"build {i} waited, then ran", sorted(ran))
            else:
                assert ran == must_run, (where, sorted(ran ^ must_run))
        ran_total += len(must_run)

        assert_outputs(project.root, WIDTH, DEPTH, where)
        q = project.run("-q")
        assert q.code == 0, (where, q)

    print(f"concurrent campaign (seed {SEED}): {ROUNDS} rounds of {BUILDS} builds, {ran_total} stage runs, each once")
