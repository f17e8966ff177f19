"""Parallel builds end to end: -j, mutex:, jobs:, output that stays readable, and two
pivotbuild processes on one project.  Overlap is judged from timestamps the stages
write themselves, never from how long pivotbuild takes."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from conftest import PIVOTBUILD, Project, Result
from helpers import Interval, events, intervals, runs, statuses


def stamp(word: str) -> str:
    """A shell line appending `NAME WORD TIME` to times.log (the stage's own clock)."""
    return (
        "python3 -c 'import os, sys, time; "
        f'sys.stdout.write("%s {word} %r\\n" % (os.environ["PIVOT_STAGE"], time.time()))\' >> times.log'
    )


def timed_stage(name: str, sleep: float = 0.5, extra: str = "") -> str:
    """A stage that logs its start, sleeps, logs its end and writes NAME.out."""
    lines = [f"stage {name}:", f"    outs: {name}.out"]
    lines += [f"    {line}" for line in extra.splitlines() if line.strip()]
    lines += [
        "    run:",
        f"        {stamp('start')}",
        f"        sleep {sleep}",
        f"        {stamp('end')}",
        "        echo done > $@",
    ]
    return "\n".join(lines) + "\n\n"


def overlap(a: Interval, b: Interval) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def build(p: Project, *args: str) -> Result:
    r = p.run(*args)
    assert r.code == 0, r
    return r


# -- -j ------------------------------------------------------------------------------------


def test_independent_stages_overlap_with_j2(project: Project) -> None:
    project.pivotfile(timed_stage("one") + timed_stage("two"))
    build(project, "-j2")
    t = intervals(project)
    assert overlap(t["one"], t["two"]), t


def test_j1_is_strictly_sequential(project: Project) -> None:
    project.pivotfile(timed_stage("one", 0.4) + timed_stage("two", 0.4))
    build(project, "-j1")
    t = intervals(project)
    assert not overlap(t["one"], t["two"]), t


# -- mutex: and jobs: ---------------------------------------------------------------------------


def test_stages_sharing_a_mutex_never_overlap(project: Project) -> None:
    project.pivotfile(
        timed_stage("g1", 0.4, "mutex: gpu") + timed_stage("g2", 0.4, "mutex: other gpu") + timed_stage("free", 0.6)
    )
    build(project, "-j4")
    t = intervals(project)
    assert not overlap(t["g1"], t["g2"]), t
    # -j4 is in force: the stage outside the group runs beside the group.
    assert any(overlap(t["free"], t[g]) for g in ("g1", "g2")), t


def test_a_star_mutex_stage_runs_alone(project: Project) -> None:
    project.pivotfile(
        timed_stage("s1", 0.3)
        + timed_stage("s2", 0.3)
        + timed_stage("alone", 0.3, "mutex: *")
        + timed_stage("s3", 0.3)
        + timed_stage("s4", 0.3)
    )
    build(project, "-j4")
    t = intervals(project)
    assert len(t) == 5
    for other in ("s1", "s2", "s3", "s4"):
        assert not overlap(t["alone"], t[other]), (other, t)


def test_a_stage_holding_all_job_tokens_runs_alone(project: Project) -> None:
    project.pivotfile(timed_stage("big", 0.4, "jobs: 2") + timed_stage("small1", 0.4) + timed_stage("small2", 0.4))
    build(project, "-j2")
    t = intervals(project)
    assert not overlap(t["big"], t["small1"]), t
    assert not overlap(t["big"], t["small2"]), t
    assert overlap(t["small1"], t["small2"]), t  # -j2 still runs two 1-token stages together


def test_jobs_above_j_is_capped_and_the_stage_still_runs(project: Project) -> None:
    project.pivotfile(timed_stage("huge", 0.1, "jobs: 8") + timed_stage("small", 0.1))
    r = build(project, "-j2", "--json")
    assert statuses(r) == {"huge": "ran", "small": "ran"}
    t = intervals(project)
    assert not overlap(t["huge"], t["small"]), t


# -- output ----------------------------------------------------------------------------------------

CHATTY = """
stage {name}:
    deps: chatty.py
    outs: {name}.out
    run: python3 chatty.py {name}; echo done > $@
"""

# Each line is written in three pieces with pauses, so two stages' pieces would
# interleave if pivotbuild passed bytes through instead of whole lines.
SCRIPT = """
import sys, time

name = sys.argv[1]
for i in range(60):
    stream = sys.stdout if i % 3 else sys.stderr
    for piece in (name + ":", str(i) + ":", name * 20 + "\\n"):
        stream.write(piece)
        stream.flush()
        time.sleep(0.002)
"""


def chatty(project: Project) -> None:
    project.write("chatty.py", SCRIPT)
    project.pivotfile("".join(CHATTY.format(name=n) for n in ("alpha", "beta")))


def _check_lines(pairs: list[tuple[str, str]]) -> None:
    """(stage, line) pairs: each line whole and shown for its own stage, every
    line there, and each stream's lines in the order written.  (The stage
    writes lines 0, 3, 6... to stderr and the rest to stdout; the order
    between its two pipes is not promised.)"""
    seen: dict[tuple[str, bool], list[int]] = {}
    for stage, line in pairs:
        m = re.fullmatch(r"(alpha|beta):(\d+):((?:alpha|beta)+)", line)
        assert m, f"mangled line from {stage}: {line!r}"
        assert m.group(1) == stage, f"{stage} shown for a line of {m.group(1)}: {line!r}"
        assert m.group(3) == stage * 20, f"interleaved line: {line!r}"
        n = int(m.group(2))
        seen.setdefault((stage, n % 3 == 0), []).append(n)
    for stage in ("alpha", "beta"):
        assert seen.get((stage, True)) == list(range(0, 60, 3)), (stage, "stderr", seen.get((stage, True)))
        assert seen.get((stage, False)) == [i for i in range(60) if i % 3], (stage, "stdout", seen.get((stage, False)))


def test_parallel_output_is_whole_lines_attributed_to_their_stage(project: Project) -> None:
    chatty(project)
    r = project.run("-j2")
    assert r.code == 0, r
    t = project.root
    assert (t / "alpha.out").exists()
    pairs = []
    for line in r.out.splitlines():
        if re.fullmatch(r"\[\d+/\d+\] \S+", line):
            continue
        m = re.fullmatch(r"(\S+) \| (.*)", line)
        assert m, f"stdout line not attributable to a stage: {line!r}"
        pairs.append((m.group(1), m.group(2)))
    _check_lines(pairs)


def test_parallel_json_log_events_carry_their_stage(project: Project) -> None:
    chatty(project)
    r = project.run("-j2", "--json")
    assert r.code == 0, r
    evs = events(r)
    logs = [e for e in evs if e["event"] == "log"]
    _check_lines([(e["stage"], e["line"]) for e in logs])
    for e in logs:  # lines 0, 3, 6... went to stderr, the rest to stdout
        number = int(e["line"].split(":")[1])
        assert e["stream"] == ("stderr" if number % 3 == 0 else "stdout"), e


# -- two builds at once -------------------------------------------------------------------------------

LOCKED = """
stage slow:
    outs: slow.txt
    run: echo slow >> runs.log; while [ ! -e "$GATE" ]; do sleep 0.01; done; echo ok > $@

stage fast:
    deps: slow.txt
    outs: fast.txt
    run: echo fast >> runs.log; echo ok > $@
"""
# The slow stage holds the first build (and so the project) until the test
# opens the gate: however slow the machine, the second build meets it running.


def start(p: Project, tmp: Path, *args: str, name: str = "first") -> subprocess.Popen[bytes]:
    """Start a build in the background, its output going to files in `tmp`."""
    env = {**os.environ, "NO_COLOR": "1", "GATE": str(tmp / "gate")}
    with (tmp / f"{name}.out").open("wb") as out, (tmp / f"{name}.err").open("wb") as err:
        return subprocess.Popen([*PIVOTBUILD, *args], cwd=p.root, env=env, stdout=out, stderr=err)


def wait_for(path: Path, text: str = "", timeout: float = 60.0) -> None:
    """Wait until `path` exists with content (holding `text`, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never held {text!r}")


def test_a_second_build_waits_for_the_first(project: Project, tmp_path: Path) -> None:
    project.pivotfile(LOCKED)
    first = start(project, tmp_path, "--json")
    second = None
    try:
        wait_for(project.root / "runs.log")  # the first build holds the project now
        second = start(project, tmp_path, "--json", name="second")
        wait_for(tmp_path / "second.err", "waiting for another pivotbuild")
        (tmp_path / "gate").touch()
        assert first.wait(timeout=60) == 0, (tmp_path / "first.err").read_text()
        assert second.wait(timeout=60) == 0, (tmp_path / "second.err").read_text()
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()
    err = (tmp_path / "second.err").read_text()
    assert err.startswith("pivotbuild: "), err
    out = (tmp_path / "second.out").read_text()
    assert statuses(Result(0, out, err)) == {"slow": "skipped", "fast": "skipped"}
    assert runs(project) == ["slow", "fast"]
    assert (project.root / "fast.txt").read_text() == "ok\n"


def test_no_wait_exits_1_while_another_build_runs(project: Project, tmp_path: Path) -> None:
    project.pivotfile(LOCKED)
    first = start(project, tmp_path)
    try:
        wait_for(project.root / "runs.log")
        second = project.run("--no-wait")  # the first is held at the gate meanwhile
        (tmp_path / "gate").touch()
        assert first.wait(timeout=60) == 0, (tmp_path / "first.err").read_text()
    finally:
        first.kill()
        first.wait()
    assert second.code == 1, second
    assert second.err.startswith("pivotbuild: "), second.err
    assert "another pivotbuild" in second.err
    assert "Traceback" not in second.err
    assert runs(project) == ["slow", "fast"]
    r = project.run("--no-wait", "--json")  # once the first is done, --no-wait just builds
    assert r.code == 0, r
    assert statuses(r) == {"slow": "skipped", "fast": "skipped"}


def test_every_stage_runs_on_every_core_the_build_may_use(project: Project) -> None:
    """The build loop's wait may hold the loop to one core while it sleeps
    (poller.py, _nearwake: woken where a stage's exit frees a core), but a
    stage, which inherits the mask of the thread that starts it, never
    starts so: 200 short stages at -j2, each writing the cores it may use."""
    names = [f"s{i}" for i in range(200)]
    project.pivotfile(
        "".join(
            f"stage {n}:\n    outs: cores/{n}.txt\n    run: grep Cpus_allowed_list /proc/self/status > $@\n\n"
            for n in names
        )
    )
    build(project, "-j2")
    mine = (Path("/proc/self/status").read_text().split("Cpus_allowed_list:")[1]).split()[0]
    seen = {n: (project.root / "cores" / f"{n}.txt").read_text().split()[-1] for n in names}
    assert set(seen.values()) == {mine}, {n: c for n, c in seen.items() if c != mine}
