#!/usr/bin/env python3
"""What a stage costs on the Dask executor beside the local one (issue 18).

    python3 benchmarks/dask_stages.py [--width 50 --depth 20] [--workers 2] [--runs 5]
                                      [-j 8] [--local-jobs 2] [--baseline DIR]

The project is compare.py's lattice with `--shape small` (1,000 `md5sum`
stages by default: each reads its source and two outputs of the layer
before, and writes three short lines), with a directory remote as its
default.  The script starts its own cluster on loopback (tests/daskcluster.py:
`dask scheduler` and `--workers` workers of one thread, free ports, each in
a temporary directory of its own) and stops it however the script ends.

Each run builds every variant clean (cache, lockfile, outputs and remote
emptied), interleaved (the order reversed every other run), checks every
output, then times a no-op; it prints the medians.  Variants: `local`
(`--executor local -j LOCAL_JOBS`) and `dask` (`--executor dask://... -j
JOBS`); with `--baseline DIR` (a directory holding another checkout's
`pivotbuild` package, e.g. `git archive main pivotbuild | tar -x -C DIR`),
also `baseline`: the same build with that code on PYTHONPATH, through a
cluster of its own started with it.  Quote ratios, not times: the machines
are shared.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import compare
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daskcluster import Cluster  # (the tests' local cluster)


@dataclass
class Variant:
    name: str
    root: Path
    args: list[str]  # -j and --executor
    env: dict[str, str]
    cluster: Cluster | None = None
    clean: list[float] = field(default_factory=list)
    # A clean build's CPU seconds: pivotbuild's (and its children's), the scheduler's, the workers' (and their stages').
    cpu: list[tuple[float, float, float]] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)


@contextmanager
def cluster(base: Path, workers: int, env: dict[str, str]) -> Iterator[Cluster]:
    """A scheduler and `workers` workers on loopback, killed on the way out
    (an exception, Ctrl-C, or SIGTERM: see `main`)."""
    running = Cluster(base, env)
    try:
        for _ in range(workers):
            running.add_worker()
        running.wait_for_workers(workers)
        yield running
    finally:
        running.stop()


def project(root: Path, stages: list[compare.Stage], pivotbuild: str) -> Path:
    """The lattice's sources and Pivotfile, with the directory `root/../NAME-remote` its default remote."""
    compare.generate(root, stages, "pivotbuild", "small")
    remote = root.with_name(root.name + "-remote")
    remote.mkdir()
    subprocess.run(
        [pivotbuild, "remote", "add", "--default", "shared", str(remote)], cwd=root, check=True, capture_output=True
    )
    return root


def clean(root: Path) -> None:
    """Forget every build: outputs, lockfile, cache and state (the config
    stays), and empty the remote."""
    for path in [*(root / "out").iterdir(), *(root / ".pivot").iterdir()]:
        if path.name != "config.toml":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (root / "Pivotfile.lock").unlink(missing_ok=True)
    remote = root.with_name(root.name + "-remote")
    shutil.rmtree(remote)
    remote.mkdir()


def cpu(running: Cluster | None) -> tuple[float, float, float]:
    """The CPU seconds used so far by this process's children (the builds),
    by the scheduler and by the workers (with their children: the stages)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = [sum(psutil.Process(p.pid).cpu_times()[:4]) for p in running.procs] if running else [0.0]
    return usage.ru_utime + usage.ru_stime, used[0], sum(used[1:])


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"dask_stages.py: {' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    return elapsed


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # (unwinds through the clusters' `finally`)


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=50, help="stages per layer (at least 2)")
    ap.add_argument("--depth", type=int, default=20, help="layers")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers, one thread each")
    ap.add_argument("--runs", type=int, default=5, help="clean builds (and no-ops) per variant; medians")
    ap.add_argument("-j", "--jobs", type=int, default=8, help="stages in flight on the cluster")
    ap.add_argument("--local-jobs", type=int, default=2, help="-j of the local executor")
    ap.add_argument("--baseline", type=Path, metavar="DIR", help="also time the pivotbuild package in DIR")
    beside = Path(sys.executable).with_name("pivotbuild")  # this venv's, else the one on PATH
    ap.add_argument("--pivotbuild", default=str(beside) if beside.exists() else shutil.which("pivotbuild"))
    ap.add_argument("--dir", type=Path, help="build here and keep the projects (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.width < 2 or args.depth < 1 or args.runs < 1 or args.workers < 1:
        ap.error("--width must be at least 2, --depth, --runs and --workers at least 1")
    if args.baseline and not (args.baseline / "pivotbuild" / "__init__.py").is_file():
        ap.error(f"{args.baseline} holds no pivotbuild package")
    stages = compare.lattice(args.width, args.depth)
    signal.signal(signal.SIGTERM, _terminated)
    with tempfile.TemporaryDirectory(prefix="pvdask-") as tmp, ExitStack() as stack:
        base = args.dir.resolve() if args.dir else Path(tmp)
        local = Variant("local", base / "local", ["-j", str(args.local_jobs), "--executor", "local"], {})
        variants = [local]
        envs = {"dask": {}}
        if args.baseline:
            envs["baseline"] = {"PYTHONPATH": str(args.baseline.resolve())}
        for name, env in envs.items():
            running = stack.enter_context(cluster(base / f"{name}-cluster", args.workers, env))
            jobs = ["-j", str(args.jobs), "--executor", running.address]
            variants.append(Variant(name, base / name, jobs, env, running))
        for v in variants:
            project(v.root, stages, args.pivotbuild)
        for i in range(args.runs):
            for v in variants if i % 2 == 0 else variants[::-1]:
                clean(v.root)
                before = cpu(v.cluster)
                v.clean.append(timed([args.pivotbuild, "-s", *v.args], v.root, v.env))
                after = cpu(v.cluster)
                v.cpu.append((after[0] - before[0], after[1] - before[1], after[2] - before[2]))
                compare.check_outputs(v.root, stages, "small", v.name)
                v.noop.append(timed([args.pivotbuild, "-s", *v.args], v.root, v.env))
                print(f"run {i + 1} {v.name}: clean {v.clean[-1]:.3f}s, no-op {v.noop[-1]:.3f}s", file=sys.stderr)
    n = len(stages)
    print(
        f"{n} stages ({args.width} x {args.depth}, md5sum), {args.workers} Dask workers on loopback;"
        f" clean builds and no-ops, median of {args.runs} (seconds; per stage in ms)"
    )
    print(f"{'executor':<10}{'-j':>4}{'clean':>9}{'noop':>9}{'/ local':>9}   per stage (ms): wall, CPU of pivotbuild,")
    print(f"{'':<44}scheduler, workers")
    base_clean = statistics.median(local.clean)
    for v in variants:
        c, noop = statistics.median(v.clean), statistics.median(v.noop)
        used = "".join(f"{1e3 * statistics.median(one) / n:>9.2f}" for one in zip(*v.cpu, strict=True))
        print(f"{v.name:<10}{v.args[1]:>4}{c:>9.3f}{noop:>9.3f}{c / base_clean:>9.2f}{1e3 * c / n:>9.2f}{used}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
