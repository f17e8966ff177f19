#!/usr/bin/env python3
"""Whether each build of compare.py's protocol waited for the CPU or for the disk.

    python3 benchmarks/cores.py                    # the reference's big-shape tools, in its order
    python3 benchmarks/cores.py --tools pivotbuild,make,ninja --shape small
    python3 benchmarks/cores.py --settle 2         # each incremental build after a `sync` and 2 s of quiet
    python3 benchmarks/cores.py --warm 600         # each build finding 600 MB of memory freed a moment ago

Runs compare.py's protocol (its `measure`: for each tool in turn a fresh
project, its clean build, --runs no-ops, --runs incremental builds; the
outputs checked) and reads /proc/stat around every build, for the whole
machine:

  busy    the cores running anything, on average over the build (of the
          machine's; the build's processes, its threads, and the kernel's
          work for them or for others meanwhile: writeback, interrupts)
  iowait  the cores idle while a task waited for the disk (an fsync's
          flush, a direct write, a read)
  steal   the cores the host gave to other guests while this one wanted them
  core-s  busy x wall: the CPU the build's time held

It prints each tool's clean build and the median of each figure over its
incremental builds.  A build whose busy cores stay near the machine's count
is bound by the CPU: it gets faster only by spending less CPU.  One whose
cores wait for I/O is bound by the disk: for pivotbuild, the fsyncs STATE.md
asks of every build (each a flush of the whole device here, which waits for
all the writeback under way: `flushes.py`), where make and ninja sync
nothing.  docs/performance.md ("Targets", issue 13's thirty-seventh
session) reads the targets that remain from it.

A benchmark, not a test (benchmarks/test_cores_smoke.py runs it small).
Linux only.  The machines are shared and noisy: quote figures from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare

REFERENCE = "pivotbuild,pivotbuild:hardlink,make,ninja,ninja+cp"
Figures = tuple[float, float, float, float]  # wall seconds, cores busy, in I/O wait, stolen


def ticks(stat: str = "/proc/stat") -> tuple[int, int, int, int]:
    """The machine's CPU time so far, in clock ticks: (all, idle, iowait, steal)."""
    with open(stat) as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), fields[3], fields[4], steal


def cores(before: tuple[int, int, int, int], after: tuple[int, int, int, int], ncpu: int) -> tuple[float, float, float]:
    """The cores busy, waiting for I/O and stolen between two `ticks`."""
    spent = [a - b for a, b in zip(after, before, strict=True)]
    total = spent[0]
    if total <= 0:
        return 0.0, 0.0, 0.0
    idle, iowait, steal = spent[1], spent[2], spent[3]
    return (
        ncpu * (total - idle - iowait - steal) / total,
        ncpu * iowait / total,
        ncpu * steal / total,
    )


def timing(record: list[tuple[str, Figures]], ncpu: int) -> Callable[..., float]:
    """compare.timed, noting the figures of each build under the project it ran in."""
    timed = compare.timed

    def timed_with_cores(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
        before = ticks()
        wall = timed(cmd, cwd, env)
        busy, iowait, steal = cores(before, ticks(), ncpu)
        record.append((Path(cwd).name, (wall, busy, iowait, steal)))
        return wall

    return timed_with_cores


def split(record: list[tuple[str, Figures]], tool: str, runs: int) -> tuple[Figures, Figures]:
    """A tool's clean build, and the median of each figure over its incremental builds."""
    mine = [figures for where, figures in record if where == tool.replace(":", "-")]
    if len(mine) != 1 + 2 * runs:
        raise SystemExit(f"cores.py: {tool} ran {len(mine)} builds, not {1 + 2 * runs}")
    incr = mine[1 + runs :]
    medians = tuple(statistics.median(f[k] for f in incr) for k in range(4))
    return mine[0], (medians[0], medians[1], medians[2], medians[3])


def row(figures: Figures) -> str:
    wall, busy, iowait, steal = figures
    return f"{wall:7.3f} {busy:5.2f} {iowait:6.2f} {steal:5.2f} {wall * busy:6.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default=REFERENCE, help=f"comma-separated, of {', '.join(compare.TOOLS)}")
    ap.add_argument("--shape", choices=compare.COMMANDS, default="big")
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5, help="no-op and incremental builds per tool")
    ap.add_argument("--settle", type=float, default=0.0, metavar="SECONDS", help="as compare.py's --settle")
    ap.add_argument("--warm", type=int, default=0, metavar="MB", help="as compare.py's --warm")
    args = ap.parse_args(argv)
    tools = args.tools.split(",")
    unknown = [t for t in tools if t not in compare.TOOLS]
    if unknown:
        ap.error(f"unknown tool {unknown[0]!r}; choose from {', '.join(compare.TOOLS)}")
    if args.width < 2 or args.depth < 1 or args.runs < 1 or args.warm < 0:
        ap.error("--width must be at least 2, --depth and --runs at least 1, --warm at least 0")
    if not os.path.exists("/proc/stat"):
        ap.error("needs /proc/stat (Linux)")
    ncpu = os.cpu_count() or 1
    record: list[tuple[str, Figures]] = []
    plain = compare.timed
    compare.timed = timing(record, ncpu)
    try:
        with tempfile.TemporaryDirectory(prefix="pvcores-") as tmp:
            compare.measure(
                tools,
                width=args.width,
                depth=args.depth,
                shape=args.shape,
                jobs=args.jobs,
                runs=args.runs,
                workdir=Path(tmp),
                settle=args.settle,
                free=args.warm,
            )
    finally:
        compare.timed = plain
    settled = f", each incremental build after `sync` and {args.settle:g} s" if args.settle else ""
    settled += f", {args.warm} MB freed before each clean and incremental build" if args.warm else ""
    print(
        f"{args.width * args.depth} stages ({args.width} x {args.depth}, {args.shape} outputs), -j{args.jobs}, "
        f"{ncpu} cores{settled}; wall s, then cores busy, in I/O wait and stolen, and core-seconds (busy x wall)"
    )
    head = "   wall  busy iowait steal core-s"
    print(f"{'':<22}{'clean':<35}{'incremental (medians)'}")
    print(f"{'tool':<22}{head}  {head}")
    for tool in tools:
        clean, incr = split(record, tool, args.runs)
        print(f"{tool:<22}{row(clean)}  {row(incr)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
