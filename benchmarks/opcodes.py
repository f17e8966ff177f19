#!/usr/bin/env python3
"""How much Python pivotbuild's build loop runs for each stage, function by function.

    python3 benchmarks/opcodes.py [--width 50] [--depth 20] [--clean] [--top 30] [--dir DIR]

On compare.py's small lattice (WIDTH x DEPTH `md5sum` stages, -j2), built
once, then one incremental build (one middle-layer source edited: 55 stages
rerun at 50 x 20), or with `--clean` one clean build (the compiled plan
kept, as phases.py's), run under a tracer that counts the bytecode
instructions (opcodes) the loop's thread executes while the build runs
(`BuildRun.execute`), each in the function it belongs to.  It prints the
total per stage run, then the modules and the functions that run the most,
per stage run, with their calls per stage run.

Counts, not times: the same code counts (nearly) the same on a busy machine
or a quiet one, so a change to the per-stage path shows as opcodes gained
or lost without rounds of timings (loopcpu.py times the same loop's parts;
valgrind's callgrind counts machine instructions, C included).  An opcode
is not a fixed cost (a call to `os.stat` is one), but most of what the loop
spends per stage beyond its system calls is the interpreter running them
(docs/performance.md, "Targets", issue 13's nineteenth session).  The
counts vary slightly from build to build, with how often the loop waited.
The tracer makes the build several times slower; only the loop's thread is
counted.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import loopcpu  # noqa: E402
import phases  # noqa: E402

# Run in the build's interpreter: counts opcodes per function in the loop's
# thread while BuildRun.execute runs, and writes them as JSON at the end on
# the descriptor PIVOT_LOOP_FD names (`pivotbuild.cli.run` leaves with os._exit).
WRAPPER = r"""
import json, os, sys
out = int(os.environ.pop("PIVOT_LOOP_FD"))
counts = {}  # code object -> [opcodes, calls]
def tracer(frame, event, arg):
    if event == "opcode":
        counts[frame.f_code][0] += 1
    elif event == "call":
        frame.f_trace_opcodes = True
        found = counts.get(frame.f_code)
        if found is None:
            counts[frame.f_code] = [0, 1]
        else:
            found[1] += 1
    return tracer
from pivotbuild.build import run as _run
_execute = _run.BuildRun.execute
def execute(self):
    sys.settrace(tracer)
    try:
        return _execute(self)
    finally:
        sys.settrace(None)
_run.BuildRun.execute = execute
me = os.getpid()
real_exit = os._exit
def leave(code):
    sys.settrace(None)
    if os.getpid() == me:
        named = {f"{c.co_filename}:{c.co_firstlineno}:{c.co_qualname}": n for c, n in counts.items()}
        os.write(out, json.dumps(named).encode())
    real_exit(code)
os._exit = leave
import pivotbuild.cli
sys.argv = ["pivotbuild", *sys.argv[1:]]
pivotbuild.cli.run()
"""

_ENDS = "BuildRun._complete"  # called once per stage run, as it ends (its calls count the stages run)


def _shown(filename: str) -> str:
    """A code object's file as printed: pivotbuild's from the package, others by name."""
    parts = Path(filename).parts
    if "pivotbuild" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("pivotbuild") :])
    return Path(filename).name


def main(argv: list[str] | None = None) -> int:
    phases.compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--clean", action="store_true", help="a clean build (the compiled plan kept), not incremental")
    ap.add_argument("--top", type=int, default=30, help="how many functions and modules to list")
    ap.add_argument("--dir", type=Path, help="where to build (default: a temporary directory)")
    args = ap.parse_args(argv)
    python, base, root, stages = loopcpu.built(args, "pivot-opcodes-")
    try:
        phases.prepare(root, args, 0)
        found: dict[str, list[int]] = loopcpu.wrapped(python, root, WRAPPER, "opcodes.py")  # type: ignore[assignment]
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    ran = sum(calls for key, (_, calls) in found.items() if key.endswith(f":{_ENDS}"))
    if not ran:
        raise SystemExit(f"opcodes.py: the build in {root} ran no stage")
    total = sum(n for n, _ in found.values())
    modules: collections.Counter[str] = collections.Counter()
    for key, (n, _) in found.items():
        modules[_shown(key.rsplit(":", 2)[0])] += n
    kind = "a clean build (plan kept)" if args.clean else "an incremental build"
    print(f"{len(stages)} stages, -j2, {kind}, {ran} run")
    print(f"the loop's thread: {total / ran:,.0f} opcodes per stage run")
    print(f"  {'opcodes':>8}  module")
    for module, n in modules.most_common(args.top):
        print(f"  {n / ran:8.1f}  {module}")
    print(f"  {'opcodes':>8} {'calls':>6}  function")
    for key, (n, calls) in sorted(found.items(), key=lambda item: -item[1][0])[: args.top]:
        filename, line, name = key.rsplit(":", 2)
        print(f"  {n / ran:8.1f} {calls / ran:6.2f}  {name} ({_shown(filename)}:{line})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
