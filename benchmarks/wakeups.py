#!/usr/bin/env python3
"""Where the kernel wakes pivotbuild's build loop, and the cores it leaves idle.

    python3 benchmarks/wakeups.py [--width 50] [--depth 20] [--runs 3] [--dir DIR]

One-shot clean builds (PIVOT_SERVER=0) of compare.py's small lattice, each
of a project made afresh, under `perf record` of the scheduler's events
(`sched_switch`, `sched_wakeup`, the forks and exits; root, or
perf_event_paranoid at most 1).  From each build's events:

  wakeups     the times the build loop's thread was woken (its process's
              main thread: the one that clones the stages)
  elsewhere   those queued on a core other than the waker's (a stage's
              exit wakes the loop while it still runs, on its own core),
              and how long they waited, in all, to run
  latency     a wakeup's mean wait to run
  idle        the cores' idle time between the first stage's start and
              the last one's end, in cores (0: both always busy)
  after exit  the part of it that follows a stage's exit on that core, until
              something runs there again (the loop, or the next stage)

The loop's wait is `_nearwake`'s where it was built (poller.py): the loop is
moved to the core an exit frees, and `elsewhere` should be a small part of
`wakeups`; with select.epoll's own wait it was four in five, 213 ms a
build (docs/performance.md, issue 13's thirty-ninth session).  Medians over
the runs; one ninja build of the same for scale.  Quote ratios, not times.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402

EVENTS = ("sched:sched_switch", "sched:sched_wakeup", "sched:sched_process_fork", "sched:sched_process_exit")
LINE = re.compile(
    r"\s*(?P<comm>.*?)\s+(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<t>[\d.]+):\s+sched:(?P<ev>\w+):(?P<rest>.*)"
)


@dataclass
class Found:
    wakeups: int
    elsewhere: int
    elsewhere_ms: float
    latency_us: float
    idle_cores: float
    after_exit_ms: float
    stages: int


def analyse(lines: Iterable[str]) -> Found:
    """The figures of one build from `perf script`'s lines."""
    events = []
    for line in lines:
        m = LINE.match(line)
        if m:
            events.append((float(m["t"]), int(m["cpu"]), m["ev"], m["rest"]))
    forks: list[tuple[float, int, int]] = []  # (when, parent, child)
    exits: list[tuple[float, int]] = []
    for t, _, ev, rest in events:
        if ev in ("sched_process_fork", "sched_process_exit"):
            pid = int(re.search(r"\bpid=(\d+)", rest)[1])  # type: ignore[index]
            if ev == "sched_process_exit":
                exits.append((t, pid))
            else:
                forks.append((t, pid, int(re.search(r"child_pid=(\d+)", rest)[1])))  # type: ignore[index]
    if not forks:
        raise SystemExit("wakeups.py: no fork in the trace (was it recorded with -a, as root?)")
    loop = Counter(parent for _, parent, _ in forks).most_common(1)[0][0]
    children = {child for _, parent, child in forks if parent == loop}
    starts = [t for t, parent, _ in forks if parent == loop]
    ends = [t for t, pid in exits if pid in children]
    first, last = min(starts), max(ends) if ends else max(starts)
    woken: tuple[float, int, int] | None = None  # (when, the core it was queued on, the waker's core)
    waits: list[tuple[float, bool]] = []
    idle_from: dict[int, tuple[float, bool]] = {}  # core -> (since, after a stage's exit)
    idle = after_exit = 0.0
    for t, cpu, ev, rest in events:
        if ev == "sched_wakeup":
            m = re.search(r"\bpid=(\d+).*target_cpu=(\d+)", rest)
            if m and int(m[1]) == loop and first <= t <= last:
                woken = (t, int(m[2]), cpu)
        elif ev == "sched_switch":
            prev = re.search(r"prev_pid=(\d+).*prev_state=(\S+)", rest)
            nxt = re.search(r"next_pid=(\d+)", rest)
            if prev is None or nxt is None:
                continue
            prev_pid, next_pid = int(prev[1]), int(nxt[1])
            if next_pid == loop and woken is not None:
                waits.append((t - woken[0], woken[1] != woken[2]))
                woken = None
            if next_pid == 0:
                idle_from[cpu] = (t, prev_pid in children and prev[2].startswith("Z"))
            elif prev_pid == 0 and cpu in idle_from:
                since, exited = idle_from.pop(cpu)
                span = min(t, last) - max(since, first)
                if span > 0:
                    idle += span
                    after_exit += span if exited else 0.0
    cores = len({cpu for _, cpu, _, _ in events}) or 1
    phase = max(last - first, 1e-9)
    away = [w for w, elsewhere in waits if elsewhere]
    return Found(
        wakeups=len(waits),
        elsewhere=len(away),
        elsewhere_ms=1e3 * sum(away),
        latency_us=1e6 * statistics.fmean([w for w, _ in waits]) if waits else 0.0,
        idle_cores=min(idle / phase, float(cores)),
        after_exit_ms=1e3 * after_exit,
        stages=len(starts),
    )


def traced(python: str, root: Path, data: Path) -> list[str]:
    """A clean build of `root` by pivotbuild (`python -m pivotbuild`) under perf; perf script's lines."""
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("wakeups.py: needs `perf` (linux-tools) on PATH")
    events = [x for e in EVENTS for x in ("-e", e)]
    cmd = [perf, "record", "-q", "-o", str(data), *events, "-a", "--", python, "-m", "pivotbuild", "-j2", "-s"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"wakeups.py: perf record failed (root, or perf_event_paranoid <= 1?):\n{done.stderr[-2000:]}")
    return subprocess.run(
        [perf, "script", "-i", str(data)], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    compare.in_process()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where to build (default: a temporary directory)")
    args = ap.parse_args(argv)
    python = compare.interpreter(compare.pivotbuild_command()[0])
    base = args.dir or Path(tempfile.mkdtemp(prefix="pivot-wakeups-"))
    stages = compare.lattice(args.width, args.depth)
    found: list[Found] = []
    ninjas: list[float] = []
    ninja = compare.find("ninja")
    try:
        for i in range(args.runs):
            root = base / f"fresh {i}"
            compare.generate(root, stages, "pivotbuild", "small")
            found.append(analyse(traced(python, root, base / "perf.data")))
            if ninja:
                theirs = base / f"ninja {i}"
                compare.generate(theirs, stages, "ninja", "small")
                ninjas.append(compare.timed([ninja, "-j2"], theirs))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)

    def median(name: str) -> float:
        return statistics.median(getattr(f, name) for f in found)

    print(f"{len(stages)} stages, -j2, one-shot clean builds of fresh projects, median of {args.runs}")
    print(f"  the loop's wakeups            {median('wakeups'):8.0f}")
    print(
        f"  queued on another core        {median('elsewhere'):8.0f}   waiting {median('elsewhere_ms'):.1f} ms in all"
    )
    print(f"  a wakeup's mean wait          {median('latency_us'):8.1f} us")
    print(f"  cores idle meanwhile          {median('idle_cores'):8.2f}")
    print(f"  of it after a stage's exit    {median('after_exit_ms'):8.1f} ms")
    if ninjas:
        print(f"ninja's build of the same: {1e3 * statistics.median(ninjas):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
