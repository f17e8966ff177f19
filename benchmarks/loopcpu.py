#!/usr/bin/env python3
"""What pivotbuild's build loop spends on each stage, part by part.

    python3 benchmarks/loopcpu.py [--width 50] [--depth 20] [--runs 5] [--clean | --fresh] [--dir DIR]

The build loop is one thread, and on compare.py's small lattice it is the
build's serial part: a stage cannot start before the loop has finished
with the one before it.  Each stage costs the loop its own CPU, the
creation of the file its `>` names, and the wait in `posix_spawn` (the
`vfork` child execs) where the stage is not cloned without that wait.
This prints both, per stage, for each part of the loop, so that a change to
one part shows as microseconds of that part (docs/performance.md,
"Targets", issue 13's eighteenth session: the loop's budget).

On compare.py's small lattice (WIDTH x DEPTH `md5sum` stages, -j2), built
once, then `--runs` incremental builds (one middle-layer source edited: 55
stages rerun at 50 x 20), or clean builds with `--clean` (the compiled plan
kept, as phases.py's), or with `--fresh` clean builds each of a project
made afresh, as compare.py's clean build is (the plan compiled; no output
of the run before removed first: on ext4 a file created soon after others
were removed waits longer in the spawn, docs/performance.md).  Each build
runs the installed pivotbuild under a wrapper that times these functions
in the loop's thread, each without the parts it calls (so the rows add up
to the loop's total):

  decide     deciding the stages made ready (BuildRun._decide_ready)
  start      starting a stage, but for the rows below (BuildRun._start)
  create     opening (creating) the file a plain command's `>` names, for
             the child's stdout (spawn._opened)
  clone      the clone of a stage's process, where _clonespawn was built
             (Starter._clone): the loop does not wait for the child's exec
  spawn      posix_spawn and its file actions (Starter._spawn, where the
             clone is not used): its wall time is the wait for the exec
  follow     waiting for and reading the stages' output (Poller.wait)
  end        a stage's end: its exit status, its outputs statted and
             hashed, the storer told (Process._end)
  record     the stage's record: journal, stat cache, seal (Recorder.ran)
  store      small outputs packed into the cache once settled, on the
             loop's clock (Storer._on_time)
  complete   the rest of handling an ended stage (BuildRun._complete)
  rest       the rest of the loop (BuildRun._loop)

with the loop's total, and the CPU the build's process spent outside the
loop's thread while the loop ran (its other threads, the journal's fsyncs
among them; this figure varies more between runs than the rows above).

Then where the loop's wall time went, per stage run: the loop's wall time
in all (`BuildRun.execute`), its CPU, the time it waited, ready to run,
for a CPU another task held (the kernel's runqueue wait for the thread,
/proc/thread-self/schedstat), and the share of the machine's CPU time left
idle while it ran (/proc/stat).  On the small lattice the loop is the
build's serial part: a loop that is never asleep (its wall time its CPU,
its spawns' waits and its runqueue waits) sets the build's pace, and a CPU
idle meanwhile is time a stage could have had (docs/performance.md, issue
13's twentieth session).  Both files are Linux's; without them those rows
are left out.

Medians over the runs, in microseconds per stage run; with ninja found,
its build of the same work for scale.

A benchmark, not a test: the wrapper names pivotbuild's own functions, so
a renamed one fails it loudly (benchmarks/test_loopcpu_smoke.py).  The
timers cost about 1 us a call, counted in the part that calls.  Quote
ratios, not times: the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402
import phases  # noqa: E402

# part, module, class (None: the module's own function), function
PARTS = (
    ("decide", "pivotbuild.build.run", "BuildRun", "_decide_ready"),
    ("start", "pivotbuild.build.run", "BuildRun", "_start"),
    ("create", "pivotbuild.build.executors.spawn", None, "_opened"),  # (a function of the module)
    ("clone", "pivotbuild.build.executors.spawn", "Starter", "_clone"),
    ("spawn", "pivotbuild.build.executors.spawn", "Starter", "_spawn"),
    ("follow", "pivotbuild.build.executors.poller", "Poller", "wait"),
    ("end", "pivotbuild.build.executors.runner", "Process", "_end"),
    ("record", "pivotbuild.build.recorder", "Recorder", "ran"),
    ("store", "pivotbuild.cache.storer", "Storer", "_on_time"),
    ("complete", "pivotbuild.build.run", "BuildRun", "_complete"),
    ("rest", "pivotbuild.build.run", "BuildRun", "_loop"),
)

# Run in the build's interpreter: times each part in the loop's thread,
# without the parts it calls, and writes the sums as JSON at the end on the
# descriptor PIVOT_LOOP_FD names (`pivotbuild.cli.run` leaves with os._exit).
WRAPPER = r"""
import importlib, json, os, sys, threading, time
out = int(os.environ.pop("PIVOT_LOOP_FD"))
parts = json.loads(os.environ.pop("PIVOT_LOOP_PARTS"))
main = threading.get_ident()
cpu, wall = time.thread_time_ns, time.perf_counter_ns
sums = {name: [0, 0, 0] for name, *_ in parts}  # calls, CPU ns, wall ns (without the parts called)
other = [0]  # the other threads' CPU while the loop ran
stack = []
def timed(name, f):
    def wrapped(*a, **k):
        if threading.get_ident() != main:
            return f(*a, **k)
        frame = [cpu(), wall(), 0, 0]
        stack.append(frame)
        try:
            return f(*a, **k)
        finally:
            stack.pop()
            c, w = cpu() - frame[0], wall() - frame[1]
            s = sums[name]
            s[0] += 1
            s[1] += c - frame[2]
            s[2] += w - frame[3]
            if stack:
                stack[-1][2] += c
                stack[-1][3] += w
    return wrapped
for name, module, owner, function in parts:
    cls = importlib.import_module(module) if owner is None else getattr(importlib.import_module(module), owner)
    if hasattr(cls, function):  # (a version without it: its row stays 0)
        setattr(cls, function, timed(name, getattr(cls, function)))
from pivotbuild.build import run as _run
_execute = _run.BuildRun.execute
sched = {"wall": 0, "runqueue": None, "idle": None}  # ns, ns, (idle ticks, all ticks) over the builds' loops
def schedstat():
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])  # (on a CPU, waiting on a runqueue, slices)
    except (OSError, ValueError, IndexError):
        return None
def ticks():
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # (idle and iowait: nothing to run)
    except (OSError, ValueError, IndexError):
        return None
def execute(self):
    p, t, w, q, k = time.process_time_ns(), cpu(), wall(), schedstat(), ticks()
    try:
        return _execute(self)
    finally:
        other[0] += (time.process_time_ns() - p) - (cpu() - t)
        sched["wall"] += wall() - w
        q2, k2 = schedstat(), ticks()
        if q is not None and q2 is not None:
            sched["runqueue"] = (sched["runqueue"] or 0) + q2 - q
        if k is not None and k2 is not None and k2[1] > k[1]:
            idle, all_ = sched["idle"] or (0, 0)
            sched["idle"] = (idle + k2[0] - k[0], all_ + k2[1] - k[1])
_run.BuildRun.execute = execute
me = os.getpid()
real_exit = os._exit
def leave(code):
    if os.getpid() == me:
        os.write(out, json.dumps({"parts": sums, "other": other[0], "sched": sched}).encode())
    real_exit(code)
os._exit = leave
import pivotbuild.cli
sys.argv = ["pivotbuild", *sys.argv[1:]]
pivotbuild.cli.run()
"""


def wrapped(python: str, root: Path, wrapper: str, who: str, env: dict[str, str] | None = None) -> object:
    """One build of `root` (-j2 -s) by `python` running `wrapper` (a script
    that runs pivotbuild's command line), which writes JSON on the
    descriptor PIVOT_LOOP_FD names as the build's process exits: that JSON,
    decoded.  `who` names the benchmark in the message of a failed build;
    `env`: more variables for the wrapper."""
    r, w = os.pipe()
    env = {**os.environ, **(env or {}), "PIVOT_LOOP_FD": str(w)}
    command = [python, "-c", wrapper, "-j2", "-s"]
    proc = subprocess.run(command, cwd=root, env=env, pass_fds=(w,), capture_output=True, text=True, check=False)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    if proc.returncode != 0 or not data:
        raise SystemExit(f"{who}: the build failed in {root} ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(data)


def built(args: argparse.Namespace, prefix: str) -> tuple[str, Path, Path, list[compare.Stage]]:
    """compare.py's small lattice (`args.width` x `args.depth`) made in
    `args.dir` (else a new temporary directory named from `prefix`) and
    built once by the installed pivotbuild: the Python that runs it, the
    directory, the project's root in it, and the stages.  (Sets
    `args.shape`, as phases.prepare reads it.)"""
    args.shape = "small"
    pivotbuild = compare.pivotbuild_command()[0]
    base = args.dir or Path(tempfile.mkdtemp(prefix=prefix))
    root = base / "pivotbuild"
    stages = compare.lattice(args.width, args.depth)
    compare.generate(root, stages, "pivotbuild", args.shape)
    compare.timed([pivotbuild, "-j2", "-s"], root)
    return compare.interpreter(pivotbuild), base, root, stages


def _measure(python: str, root: Path) -> dict[str, object]:
    """One build under the wrapper: each part's calls, CPU and wall (ns), and the other threads' CPU."""
    found: dict[str, object] = wrapped(python, root, WRAPPER, "loopcpu.py", {"PIVOT_LOOP_PARTS": json.dumps(PARTS)})  # type: ignore[assignment]
    return found


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clean", action="store_true", help="clean builds (the compiled plan kept), not incremental")
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="clean builds of a project made afresh for each run, as compare.py's (no outputs removed before)",
    )
    ap.add_argument("--dir", type=Path, help="where to build (default: a temporary directory)")
    args = ap.parse_args(argv)
    python, base, root, stages = built(args, "pivot-loopcpu-")
    ninja = compare.find("ninja")
    if ninja:
        compare.generate(base / "ninja", stages, "ninja", args.shape)
        compare.timed([ninja, "-j2"], base / "ninja")
    cpu: dict[str, list[float]] = {p[0]: [] for p in PARTS}
    wall: dict[str, list[float]] = {p[0]: [] for p in PARTS}
    others: list[float] = []
    whole: dict[str, list[float]] = {"wall": [], "runqueue": [], "idle": []}
    ran: list[int] = []
    ninjas: list[float] = []
    try:
        for i in range(args.runs):
            where = root
            if args.fresh:  # (as compare.py's clean build: the files the build creates follow no removal of ours)
                where = base / f"fresh {i}"
                compare.generate(where, stages, "pivotbuild", args.shape)
            else:
                phases.prepare(root, args, i)
            found = _measure(python, where)
            sums: dict[str, list[int]] = found["parts"]  # type: ignore[assignment]
            n = sums["complete"][0]  # (each stage run ends once; not all start by _start)
            if not n:
                raise SystemExit(f"loopcpu.py: the build in {where} ran no stage")
            ran.append(n)
            for name, (_, c, w) in sums.items():
                cpu[name].append(c / n / 1e3)
                wall[name].append(w / n / 1e3)
            others.append(found["other"] / n / 1e3)  # type: ignore[operator]
            sched: dict[str, object] = found["sched"]  # type: ignore[assignment]
            whole["wall"].append(sched["wall"] / n / 1e3)  # type: ignore[operator]
            if sched["runqueue"] is not None:
                whole["runqueue"].append(sched["runqueue"] / n / 1e3)  # type: ignore[operator]
            if sched["idle"] is not None:
                idle, all_ = sched["idle"]  # type: ignore[misc]
                whole["idle"].append(100 * idle / all_)
            if ninja:
                theirs = base / "ninja"
                if args.fresh:
                    theirs = base / f"fresh ninja {i}"
                    compare.generate(theirs, stages, "ninja", args.shape)
                else:
                    phases.prepare(theirs, args, i, ninja=True)
                ninjas.append(compare.timed([ninja, "-j2"], theirs) * 1e3)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    kind = (
        "clean builds of fresh projects"
        if args.fresh
        else "clean builds (plan kept)"
        if args.clean
        else "incremental builds"
    )
    print(f"{len(stages)} stages, -j2, {kind}, {statistics.median(ran):.0f} run each, median of {args.runs}")
    print("the loop's thread, per stage run (microseconds)")
    print(f"  {'part':<12}{'CPU':>9}{'wall':>9}")
    for name, *_ in PARTS:
        print(f"  {name:<12}{statistics.median(cpu[name]):9.1f}{statistics.median(wall[name]):9.1f}")
    totals_cpu = [sum(cpu[p[0]][i] for p in PARTS) for i in range(args.runs)]
    totals_wall = [sum(wall[p[0]][i] for p in PARTS) for i in range(args.runs)]
    print(f"  {'loop':<12}{statistics.median(totals_cpu):9.1f}{statistics.median(totals_wall):9.1f}")
    print(f"  {'other threads':<12}{statistics.median(others):6.1f}")
    print("the loop's wall time, per stage run (microseconds)")
    print(f"  {'in all':<26}{statistics.median(whole['wall']):9.1f}")
    print(f"  {'on a CPU':<26}{statistics.median(totals_cpu):9.1f}")
    if whole["runqueue"]:
        print(f"  {'waiting for a CPU':<26}{statistics.median(whole['runqueue']):9.1f}")
    if whole["idle"]:
        print(f"the CPUs were idle {statistics.median(whole['idle']):.0f}% of the time meanwhile")
    if ninjas:
        print(f"ninja's build of the same: {statistics.median(ninjas):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
