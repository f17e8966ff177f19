#!/usr/bin/env python3
"""What a `py:` stage costs beside a shell stage (issue 16).

    python3 benchmarks/py_stages.py [--stages 1000] [--runs 5] [-j 2] [--pivotbuild PATH]

Projects of `--stages` independent trivial stages: `py: steps:noop` (the
function does nothing) beside `run: true` (the issue's comparison: each
stage's cost is pivotbuild's and its process's), and `py: steps:touch` (the
function writes its one output) beside `run: echo x > $@` (the shell does).  Each is built clean, interleaved,
`--runs` times; medians of the wall time and of the CPU pivotbuild and its
children used, in all and per stage.  Quote ratios, not times: the machines
are shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = {
    "py: steps:noop": "    always: yes\n    py: steps:noop\n",
    "run: true": "    always: yes\n    run: true\n",
    "py: steps:touch": "    outs: o/{i}.txt\n    py: steps:touch\n",
    "run: echo x > $@": "    outs: o/{i}.txt\n    run: echo x > $@\n",
}
STEPS = "def noop(ctx):\n    pass\n\ndef touch(ctx):\n    with open(ctx.outs[0], 'w') as f:\n        f.write('x\\n')\n"


def _project(root: Path, kind: str, stages: int) -> Path:
    root.mkdir(parents=True)
    (root / "steps.py").write_text(STEPS)
    body = KINDS[kind]
    (root / "Pivotfile").write_text("".join(f"stage s{i}:\n{body.format(i=i)}\n" for i in range(stages)))
    return root


def _clean_build(pivotbuild: str, root: Path, jobs: int) -> tuple[float, float]:
    """Wall and CPU seconds (pivotbuild and its children) of a clean build."""
    for name in (".pivot", "o"):
        shutil.rmtree(root / name, ignore_errors=True)
    (root / "Pivotfile.lock").unlink(missing_ok=True)
    (root / ".pivot").mkdir()
    (root / "o").mkdir()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([pivotbuild, f"-j{jobs}", "-s"], cwd=root, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    os.environ["PIVOT_SERVER"] = "0"  # (as compare.in_process: each build in its own process, no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    beside = Path(sys.executable).with_name("pivotbuild")  # this venv's, else the one on PATH
    ap.add_argument("--pivotbuild", default=str(beside) if beside.exists() else shutil.which("pivotbuild"))
    ap.add_argument("--dir", help="build here instead of a temporary directory")
    args = ap.parse_args(argv)
    rows: dict[str, tuple[list[float], list[float]]] = {kind: ([], []) for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="pvpy-") as tmp:
        base = Path(args.dir or tmp)
        roots = {kind: _project(base / f"p{n}", kind, args.stages) for n, kind in enumerate(KINDS)}
        for i in range(args.runs):
            order = list(KINDS)
            for kind in order if i % 2 == 0 else order[::-1]:
                wall, cpu = _clean_build(args.pivotbuild, roots[kind], args.jobs)
                rows[kind][0].append(wall)
                rows[kind][1].append(cpu)
    print(f"{args.stages} stages, -j{args.jobs}, clean builds, median of {args.runs} (seconds; per stage in ms)")
    print(f"{'stages':<20}{'wall':>9}{'cpu':>9}{'wall/stage':>12}{'cpu/stage':>11}")
    for kind, (walls, cpus) in rows.items():
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"{kind:<20}{wall:>9.3f}{cpu:>9.3f}{1e3 * wall / args.stages:>12.2f}{1e3 * cpu / args.stages:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
