#!/usr/bin/env python3
"""A clean build, layer by layer, against ninja's.

    python3 benchmarks/layers.py [--shape big] [--mode hardlink] [--width 50 --depth 20] [--runs 3] [--dir DIR]

compare.py's lattice is DEPTH layers of WIDTH stages, each layer reading
the one before, so a clean build runs it about layer by layer.  This
builds a fresh project for each run (`sync` before each build), with the
installed pivotbuild and with ninja, alternately, and prints for each
layer how long the build took from the end of the layer before to the end
of this one (the last stage of it to finish), medians over the runs in
milliseconds; the first layer's row counts from the command's start, so
it holds what a build does before its first stage (the interpreter,
imports, the Pivotfile compiled).  Where pivotbuild's build falls behind
ninja's shows as the rows that differ: its start, the layers of small
outputs (its loop's cost per stage), or those of large ones (hashing).

Two rows more: the machine's busy and idle time over each build, in
core-seconds (`/proc/stat`, medians), so that a build that loses while
doing no more work than ninja's shows it is leaving a core idle (the
twenty-sixth session: hardlink's big clean build, busy 2.66 against 2.71,
idle 0.72 against 0.11).

pivotbuild's times come from a wrapper in its process that notes when
each stage's end is handled (`BuildRun._complete`), counted from the
moment the command is started; ninja's from its `.ninja_log` (whole
milliseconds, from its own start, a millisecond or so later).  A
benchmark, not a test (benchmarks/test_layers_smoke.py runs it small);
quote ratios, not times: the machines are shared.
"""

from __future__ import annotations

import argparse
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
import loopcpu  # noqa: E402

# Run in the build's interpreter: each stage's end, in seconds since the
# command was started (PIVOT_LAYERS_T0, the monotonic clock the parent read),
# written as JSON on PIVOT_LOOP_FD as the process exits.
WRAPPER = r"""
import json, os, sys, time
out = int(os.environ.pop("PIVOT_LOOP_FD"))
t0 = float(os.environ.pop("PIVOT_LAYERS_T0"))
ends = {}
from pivotbuild.build import run as _run
_complete = _run.BuildRun._complete
def complete(self, done):
    ends[done.job.stage.id.name] = time.monotonic() - t0
    return _complete(self, done)
_run.BuildRun._complete = complete
me = os.getpid()
real_exit = os._exit
def leave(code):
    if os.getpid() == me:
        os.write(out, json.dumps(ends).encode())
    real_exit(code)
os._exit = leave
import pivotbuild.cli
sys.argv = ["pivotbuild", *sys.argv[1:]]
pivotbuild.cli.run()
"""


def layer_of(name_or_out: str) -> int:
    """The layer of a lattice stage (`s3_17`) or of its output (`out/3_17.txt`)."""
    return int(name_or_out.rsplit("/", 1)[-1].lstrip("s").split("_", 1)[0])


def spans(ends: dict[str, float], depth: int) -> list[float]:
    """Each layer's span in seconds: from the end of the layer before (0 for
    the first) to the end of its own last stage."""
    last = [0.0] * depth
    for name, end in ends.items():
        layer = layer_of(name)
        last[layer] = max(last[layer], end)
    return [last[i] - (last[i - 1] if i else 0.0) for i in range(depth)]


def cores() -> tuple[float, float]:
    """The machine's busy and idle time so far, summed over its cores, in
    seconds (`/proc/stat`'s first line: user, nice, system, irq and softirq
    are busy; idle and iowait idle); (0, 0) where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq = ticks
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, (idle + iowait) / hz


def pivotbuild_ends(python: str, root: Path) -> dict[str, float]:
    t0 = time.monotonic()
    ends: dict[str, float] = loopcpu.wrapped(python, root, WRAPPER, "layers.py", {"PIVOT_LAYERS_T0": repr(t0)})  # type: ignore[assignment]
    return ends


def ninja_ends(ninja: str, root: Path) -> dict[str, float]:
    subprocess.run([ninja, "-j2"], cwd=root, check=True, stdout=subprocess.DEVNULL)
    ends = {}
    for line in (root / ".ninja_log").read_text().splitlines():
        if line.startswith("#"):
            continue
        _start, end, _mtime, out, _hash = line.split("\t")
        ends[out] = int(end) / 1e3
    return ends


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shape", choices=("small", "big"), default="small")
    ap.add_argument(
        "--mode", choices=("copy", "hardlink"), default="copy", help='the checkout (hardlink: `checkout = "hardlink"`)'
    )
    ap.add_argument("--dir", type=Path, help="where to build (default: a temporary directory)")
    args = ap.parse_args(argv)
    ninja = compare.find("ninja")
    if ninja is None:
        raise SystemExit("layers.py: ninja is not on PATH (pip install ninja)")
    python = compare.interpreter(compare.pivotbuild_command()[0])
    kind = "pivotbuild:hardlink" if args.mode == "hardlink" else "pivotbuild"
    stages = compare.lattice(args.width, args.depth)
    base = args.dir or Path(tempfile.mkdtemp(prefix="pivot-layers-"))
    ours: list[list[float]] = []
    theirs: list[list[float]] = []
    use: dict[str, list[tuple[float, float]]] = {"pivotbuild": [], "ninja": []}  # (busy, idle) over each build
    try:
        for i in range(args.runs):
            order = ("pivotbuild", "ninja") if i % 2 == 0 else ("ninja", "pivotbuild")
            for tool in order:
                root = base / f"{tool} {i}"
                compare.generate(root, stages, kind if tool == "pivotbuild" else "ninja", args.shape)
                os.sync()
                busy, idle = cores()
                if tool == "pivotbuild":
                    ours.append(spans(pivotbuild_ends(python, root), args.depth))
                else:
                    theirs.append(spans(ninja_ends(ninja, root), args.depth))
                after = cores()
                use[tool].append((after[0] - busy, after[1] - idle))
                shutil.rmtree(root)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"{len(stages)} stages ({args.shape} outputs, {kind}), -j2, clean builds of fresh projects, "
        f"each layer's span (milliseconds, median of {args.runs})"
    )
    print(f"  {'layer':<8}{'pivotbuild':>12}{'ninja':>10}{'ratio':>8}")
    for layer in range(args.depth):
        mine = statistics.median(r[layer] for r in ours) * 1e3
        other = statistics.median(r[layer] for r in theirs) * 1e3
        print(f"  {layer:<8}{mine:12.1f}{other:10.1f}{mine / other if other else float('nan'):8.2f}")
    mine = statistics.median(sum(r) for r in ours) * 1e3
    other = statistics.median(sum(r) for r in theirs) * 1e3
    print(f"  {'in all':<8}{mine:12.1f}{other:10.1f}{mine / other if other else float('nan'):8.2f}")
    for i, row in enumerate(("busy", "idle")):
        mine, other = (statistics.median(u[i] for u in use[tool]) for tool in ("pivotbuild", "ninja"))
        print(f"  {row:<8}{mine:12.2f}{other:10.2f}   (core-seconds over the build, the machine's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
