#!/usr/bin/env python3
"""The fixed cost of one pivotbuild command, beside the interpreter's own start-up.

    python3 benchmarks/fixed_cost.py [--runs 21] [--pivotbuild PATH] [--baseline PATH]

In a one-stage project (`md5sum in.txt > out.txt`), interleaved, medians of
`--runs` (seconds):
  python      `python -c pass` with the interpreter pivotbuild runs under
  no-op       `pivotbuild` with nothing to do
  one stage   `pivotbuild` after in.txt was edited: start-up, imports, the
              plan, lockfile, stat cache, seal and history, and one stage
  ninja       the same one-stage build with ninja, if it is on PATH
With `--baseline`, another pivotbuild (e.g. an older checkout's
.venv/bin/pivotbuild) is timed in the same runs.  Quote ratios, not times:
the machines are shared.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare


def _timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / ".pivot").mkdir()
    (root / "in.txt").write_text("0\n")
    stage = "stage one:\n    deps: in.txt\n    outs: out.txt\n    run: md5sum in.txt > out.txt\n"
    (root / "Pivotfile").write_text(stage)
    (root / "build.ninja").write_text("rule md5\n  command = md5sum $in > $out\nbuild out.txt: md5 in.txt\n")
    return root


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21)
    beside = Path(sys.executable).with_name("pivotbuild")  # this venv's, else the one on PATH
    ap.add_argument("--pivotbuild", default=str(beside) if beside.exists() else shutil.which("pivotbuild"))
    ap.add_argument("--baseline", help="another pivotbuild executable, timed in the same runs")
    args = ap.parse_args(argv)
    programs = {"pivotbuild": str(Path(args.pivotbuild).resolve())}
    if args.baseline:
        programs["baseline"] = str(Path(args.baseline).resolve())
    ninja = shutil.which("ninja")
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pvfixed-") as tmp:
        roots = {name: _project(Path(tmp, name)) for name in [*programs, "ninja"]}
        for name, prog in programs.items():
            subprocess.run([prog, "-s"], cwd=roots[name], check=True, capture_output=True)
        if ninja:
            subprocess.run([ninja], cwd=roots["ninja"], check=True, capture_output=True)
        python = compare.interpreter(programs["pivotbuild"])
        for i in range(args.runs):
            rows.setdefault("python -c pass", []).append(_timed([python, "-c", "pass"], Path(tmp)))
            # Each run alternates which program goes first: the first is slower (it pays
            # for the page cache and CPU caches the second then finds warm).
            order = list(programs.items())
            for name, prog in order if i % 2 == 0 else order[::-1]:
                root = roots[name]
                rows.setdefault(f"{name} no-op", []).append(_timed([prog, "-s"], root))
                (root / "in.txt").write_text(f"{i + 1}\n")
                rows.setdefault(f"{name} one stage", []).append(_timed([prog, "-s"], root))
            if ninja:
                (roots["ninja"] / "in.txt").write_text(f"{i + 1}\n")
                rows.setdefault("ninja one stage", []).append(_timed([ninja], roots["ninja"]))
    base = statistics.median(rows["python -c pass"])
    print(f"median of {args.runs} runs, seconds (and as a multiple of `python -c pass`)")
    for name, times in rows.items():
        m = statistics.median(times)
        print(f"{name:<24}{m:>9.4f}{m / base:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
