#!/usr/bin/env python3
"""Where a resident build's time goes: what a build server (docs/server.md)
or `-w` pays per build, with no interpreter start and no imports.

    .venv/bin/python benchmarks/resident.py [--width 50] [--depth 20] [--runs 15] [--edit middle|last]

On compare.py's small lattice (WIDTH x DEPTH `md5sum` stages, -j2), built
once by the `pivotbuild` command, then `--runs` builds in this process
through `Residents` (the engines a server keeps), each after editing one
source: of the middle layer (`middle`: 55 stages rerun at 50 x 20) or of
the last (`last`: one stage, so the build's fixed cost shows).  It prints
the median of the whole build and of each part it times, in milliseconds
(a part called twice a build counts both):

  fast check      the plan and seal read, every sealed stamp statted
  holding         of which: the stamps statted (Seal.holding)
  stages          the build loop (BuildRun.execute)
  state close     journal folded, lockfile and its cache copy, stat caches
  stat caches     of which: the stat caches settled and saved
  lockfile        of which: the lockfile written
  seal            the seal written (Recorder.seal)
  packs           the cache's pack indexes read (Packs._load)
  fsync           every fsync, wherever it is
  after answer    what a server does once its client has the answer (the
                  seal: Engine._seal_later), not in `total` nor in the parts

A benchmark, not a test: benchmarks/test_resident_smoke.py runs it small.
Run it with the venv's Python (it imports pivotbuild). Quote ratios, not
times: the machines are shared.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402

# label, module, owner (a class, or None), function
PARTS = (
    ("fast check", "pivotbuild.build.fastpath", None, "check"),
    ("holding", "pivotbuild.state.seal", "Seal", "holding"),
    ("stages", "pivotbuild.build.run", "BuildRun", "execute"),
    ("state close", "pivotbuild.state.store", "StateStore", "close"),
    ("stat caches", "pivotbuild.state.statcache", "StatCache", "save"),
    ("lockfile", "pivotbuild.state.lockfile", None, "write"),
    ("seal", "pivotbuild.build.recorder", "Recorder", "seal"),
    ("packs", "pivotbuild.cache.pack", "Packs", "_load"),
    ("fsync", "os", None, "fsync"),
)


def _timed(spent: dict[str, float], label: str, f: Callable[..., object]) -> Callable[..., object]:
    def wrapped(*args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - t0

    return wrapped


def _wrap_parts(spent: dict[str, float]) -> None:
    import importlib

    for label, module, owner, name in PARTS:
        obj = importlib.import_module(module)
        target = getattr(obj, owner) if owner else obj
        setattr(target, name, _timed(spent, label, getattr(target, name)))


def measure(root: Path, runs: int, edit: str, width: int, depth: int) -> dict[str, list[float]]:
    """`runs` builds of `root` through Residents: each part's milliseconds per build."""
    from pivotbuild.cli import main
    from pivotbuild.cli.residents import Residents

    spent: dict[str, float] = collections.defaultdict(float)
    _wrap_parts(spent)
    residents = Residents()
    layer = depth - 1 if edit == "last" else depth // 2
    found: dict[str, list[float]] = collections.defaultdict(list)
    null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    here = os.getcwd()
    os.chdir(root)
    try:
        for i in range(runs + 2):  # (the first two warm the engine up: not counted)
            with open(f"src/{layer}_{(i * 7) % width}.txt", "a") as f:
                f.write(f"resident {i}\n")
            spent.clear()
            os.dup2(null, 1)
            os.dup2(null, 2)
            t0 = time.perf_counter()
            try:
                code = main(["-j2", "-s"], residents=residents)
            finally:
                total = time.perf_counter() - t0
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
            if code != 0:
                raise SystemExit(f"resident.py: a build failed in {root} (exit {code})")
            answered = dict(spent)
            t0 = time.perf_counter()
            residents.after()  # (as the server does once its client has the answer: not in `total`)
            later = time.perf_counter() - t0
            if i >= 2:
                found["total"].append(total * 1e3)
                found["after answer"].append(later * 1e3)
                for label, *_ in PARTS:
                    found[label].append(answered.get(label, 0.0) * 1e3)
    finally:
        os.chdir(here)
        os.close(null)
    return found


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--edit", choices=("middle", "last"), default="middle")
    ap.add_argument("--dir", type=Path, help="where to build (default: a temporary directory)")
    args = ap.parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="pivot-resident-"))
    root = base / "pivotbuild"
    compare.generate(root, compare.lattice(args.width, args.depth), "pivotbuild", "small")
    subprocess.run([*compare.pivotbuild_command(), "-j2", "-s"], cwd=root, check=True, capture_output=True)
    found = measure(root, args.runs, args.edit, args.width, args.depth)
    what = f"{args.runs} resident builds ({args.edit} source edited)"
    print(f"{args.width * args.depth} stages, -j2, {what}, ms (median)")
    for label in ("total", *(p[0] for p in PARTS), "after answer"):
        print(f"{label:<14}{statistics.median(found[label]):>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
