#!/usr/bin/env python3
"""Where the time of one pivotbuild command goes, phase by phase.

    python3 benchmarks/phases.py [--width 50] [--depth 20] [--runs 7] [--clean | --fresh]
                                 [--shape big] [--mode hardlink] [--warm MB]

On compare.py's small lattice (WIDTH x DEPTH `md5sum` stages, -j2; with
`--shape big`, its big one: `cat`, outputs doubling with each layer), built
once, then `--runs` incremental builds (one source of the middle layer
edited each time: 55 stages rerun at 50 x 20), or with `--clean` clean
builds (outputs, state and lockfile removed; the compiled plan kept), or
with `--fresh` clean builds of a project made afresh for each, as
compare.py's clean build is (a project's first build: its Pivotfile
compiled, which `plan` then holds).  Each
build runs the installed pivotbuild under a wrapper that notes when each
phase begins (by wrapping the functions that begin them), and prints the
median of each, in milliseconds:

  interpreter   `python -c pass` (timed apart: the wrapper starts after it)
  imports       the command line and the engine
  fast check    the compiled plan and the seal read, every sealed stamp statted
  plan          the project and its graph restored from the plan (with
                --fresh: compiled from the Pivotfile, the plan saved)
  setup         the project lock, lockfiles and stat caches, the seal's
                stages settled, the history's durations, the executor
  stages        the build loop: deciding, starting and recording stages
  storing       waiting for the last outputs to reach the cache
  records       lockfiles, stat caches and the seal written (with their fsyncs)
  exit          the rest, to the process's end

and two totals, each the median of its own runs: the build as a user runs
it, and the same build in a child forked from a process that had already
imported pivotbuild (what a resident server would save: the interpreter's
start and the imports).  With ninja found, its build of the same edit.
`--mode hardlink` builds with `checkout = "hardlink"`; `--warm MB` frees
that much memory before each build, pivotbuild's and ninja's alike (see
compare.py's `--warm`).

A benchmark, not a test: the wrapper names pivotbuild's own functions, so
a renamed one fails it loudly (benchmarks/test_phases_smoke.py).  Quote
ratios, not times: the machines are shared.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402

PHASES = ("interpreter", "imports", "fast check", "plan", "setup", "stages", "storing", "records", "exit")

# Run in the build's interpreter: notes when each phase begins, writes them
# as JSON at the end on the descriptor PIVOT_PHASES_FD names
# (`pivotbuild.cli.run` leaves with os._exit).
WRAPPER = r"""
import json, os, sys, time
t0 = time.perf_counter()
out = int(os.environ.pop("PIVOT_PHASES_FD"))
me = os.getpid()  # (the fast check may fork a child to stat half the stamps: it leaves with os._exit too)
marks = {}
def mark(name):
    marks.setdefault(name, (time.perf_counter() - t0) * 1e3)
import importlib
def begins(module, owner, name, phase, after=None):
    obj = importlib.import_module(module)
    obj = getattr(obj, owner) if owner else obj
    f = getattr(obj, name)
    def wrapped(*a, **k):
        mark(phase)
        try:
            return f(*a, **k)
        finally:
            if after:
                mark(after)
    setattr(obj, name, wrapped)
import pivotbuild.cli
import pivotbuild.build.engine
mark("fast check")
begins("pivotbuild.state.plan", None, "restore", "plan")
import pivotbuild.build.session as session
load_compiled = session.load_compiled
def compiling(*a, **k):  # (no fresh plan: compiled within setup, and counted as `plan`)
    t = time.perf_counter()
    try:
        return load_compiled(*a, **k)
    finally:
        marks["compiled"] = marks.get("compiled", 0.0) + (time.perf_counter() - t) * 1e3
session.load_compiled = compiling
begins("pivotbuild.build.engine", "Engine", "build", "setup", after="exit")
begins("pivotbuild.build.run", "BuildRun", "execute", "stages")
begins("pivotbuild.build.recorder", "Recorder", "finish", "storing", after="records")
real_exit = os._exit
def leave(code):
    if os.getpid() == me:
        marks["end"] = (time.perf_counter() - t0) * 1e3
        os.write(out, json.dumps(marks).encode())
    real_exit(code)
os._exit = leave
sys.argv = ["pivotbuild", *sys.argv[1:]]
pivotbuild.cli.run()
"""

# Imports pivotbuild, then forks one child per line on stdin (a project
# directory): the child runs the build there; the parent writes back the
# seconds it took.  What a resident process that forks per build would pay.
FORKER = r"""
import os, sys, time
import pivotbuild.cli, pivotbuild.build.engine
from pivotbuild.cli import main
for line in sys.stdin:
    where = line.strip()
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.chdir(where)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os._exit(main(["-j2", "-s"]))
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), time.perf_counter() - t, flush=True)
"""


def _phases(python: str, root: Path) -> tuple[dict[str, float], float]:
    """One build under the wrapper: each phase's milliseconds, and the wall time."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    env = {**os.environ, "PIVOT_PHASES_FD": str(w)}
    command = [python, "-c", WRAPPER, "-j2", "-s"]
    proc = subprocess.run(command, cwd=root, env=env, pass_fds=(w,), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    if proc.returncode != 0 or not data:
        raise SystemExit(f"phases.py: the build failed in {root} ({proc.returncode}):\n{proc.stderr[-2000:]}")
    marks: dict[str, float] = json.loads(data)
    following = marks["end"]
    for phase in reversed(PHASES[2:]):  # (a phase that did not happen, as `plan` with no plan: of no length)
        following = marks.setdefault(phase, following)
    starts = [(marks[p], p) for p in PHASES[2:]] + [(marks["end"], "end")]
    found = {"imports": marks["fast check"]}
    for (at, phase), (nxt, _) in itertools.pairwise(starts):
        found[phase] = max(0.0, nxt - at)
    compiled = marks.get("compiled", 0.0)  # (the Pivotfile compiled, inside setup: moved to `plan`)
    found["plan"] += compiled
    found["setup"] = max(0.0, found["setup"] - compiled)
    return found, wall


def prepare(root: Path, args: argparse.Namespace, i: int, *, ninja: bool = False) -> None:
    """Make the next build's work: an edit, or a clean slate (pivotbuild's
    compiled plan kept; with `ninja`, a tree of ninja's, its log removed)."""
    if not args.clean:
        compare.edit(root, args.width, args.depth, i)
        return
    shutil.rmtree(root / "out")
    (root / "out").mkdir()
    if ninja:
        (root / ".ninja_log").unlink(missing_ok=True)
        return
    (root / "Pivotfile.lock").unlink(missing_ok=True)
    for entry in (root / ".pivot").iterdir():
        if entry.name != "plan":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--shape", choices=sorted(compare.COMMANDS), default="small")
    ap.add_argument("--clean", action="store_true", help="clean builds (the compiled plan kept), not incremental")
    ap.add_argument(
        "--fresh", action="store_true", help="clean builds, each of a project made afresh (its Pivotfile compiled)"
    )
    ap.add_argument("--dir", type=Path, help="where to build (default: a temporary directory)")
    ap.add_argument("--warm", type=int, default=0, metavar="MB", help="as compare.py's: memory freed before each build")
    ap.add_argument(
        "--mode", choices=("copy", "hardlink"), default="copy", help='the checkout (hardlink: `checkout = "hardlink"`)'
    )
    args = ap.parse_args(argv)
    if args.warm < 0 or (args.warm and not hasattr(os, "memfd_create")):
        ap.error("--warm must be at least 0, and needs memfd_create (Linux)")
    if args.clean and args.fresh:
        ap.error("--clean and --fresh are two kinds of clean build: choose one")
    pivotbuild = compare.pivotbuild_command()[0]
    python = compare.interpreter(pivotbuild)
    base = args.dir or Path(tempfile.mkdtemp(prefix="pivot-phases-"))
    root = base / "pivotbuild"
    stages = compare.lattice(args.width, args.depth)
    kind = "pivotbuild:hardlink" if args.mode == "hardlink" else "pivotbuild"
    compare.generate(root, stages, kind, args.shape)
    compare.timed([pivotbuild, "-j2", "-s"], root)
    ninja = compare.find("ninja")
    if ninja:
        compare.generate(base / "ninja", stages, "ninja", args.shape)
        compare.timed([ninja, "-j2"], base / "ninja")

    def made(name: str, tool: str = kind) -> Path:
        """A project made afresh (--fresh), for one build."""
        where = base / name
        compare.generate(where, stages, tool, args.shape)
        return where

    forker = subprocess.Popen([python, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert forker.stdin is not None and forker.stdout is not None
    rows: dict[str, list[float]] = {p: [] for p in PHASES}
    walls: list[float] = []
    forked: list[float] = []
    ninjas: list[float] = []
    try:
        for i in range(args.runs):
            rows["interpreter"].append(compare.timed([python, "-c", "pass"], root) * 1e3)
            where = made(f"fresh {i}") if args.fresh else root
            if not args.fresh:
                prepare(root, args, 2 * i)
            compare.warm(args.warm)
            found, wall = _phases(python, where)
            walls.append(wall * 1e3)
            for phase, ms in found.items():
                rows[phase].append(ms)
            if args.fresh:
                where = made(f"fresh {i} forked")
            else:
                prepare(root, args, 2 * i + 1)
            compare.warm(args.warm)
            forker.stdin.write(f"{where}\n")
            forker.stdin.flush()
            code, seconds = forker.stdout.readline().split()
            if code != "0":
                raise SystemExit(f"phases.py: the forked build failed in {where} ({code})")
            forked.append(float(seconds) * 1e3)
            if ninja:
                theirs = made(f"fresh {i} ninja", "ninja") if args.fresh else base / "ninja"
                if not args.fresh:
                    prepare(theirs, args, 2 * i, ninja=True)
                compare.warm(args.warm)
                ninjas.append(compare.timed([ninja, "-j2"], theirs) * 1e3)
    finally:
        forker.stdin.close()
        forker.wait()
        forker.stdout.close()
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    how = (
        "clean builds of fresh projects (the Pivotfile compiled)"
        if args.fresh
        else "clean builds (plan kept)"
        if args.clean
        else "incremental builds"
    )
    print(f"{len(stages)} stages, -j2, {how}, median of {args.runs} (milliseconds)")
    for phase in PHASES:
        print(f"  {phase:<12} {statistics.median(rows[phase]):9.1f}")
    print(f"  {'total':<12} {statistics.median(walls):9.1f}   (the build as run, under the wrapper)")
    print(f"  {'forked':<12} {statistics.median(forked):9.1f}   (forked from a process that imported pivotbuild)")
    if ninjas:
        print(f"  {'ninja':<12} {statistics.median(ninjas):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
