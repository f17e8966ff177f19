#!/usr/bin/env python3
"""Two versions of pivotbuild's code, timed against each other, interleaved.

    python3 benchmarks/ab.py --base f78c5e6                  # a git revision (a worktree, removed after)
    python3 benchmarks/ab.py --base ../old --rounds 20 --what incr
    python3 benchmarks/ab.py --base HEAD~1 --shape big --mode hardlink --rounds 4
    python3 benchmarks/ab.py --base HEAD~1 --what fresh --rounds 16 --edits 5
    python3 benchmarks/ab.py --base HEAD~3 --what incr --rounds 15 --served    # as a user's builds go
    python3 benchmarks/ab.py --base HEAD~1 --shape big --mode hardlink --what sequence --rounds 3 --served
    python3 benchmarks/ab.py --base HEAD~1 --shape big --what clean,fresh --rounds 6 --served --cold

On compare.py's lattice (WIDTH x DEPTH stages, -j2), each round runs every
version once, in a random order: `clean`, a build of a fresh copy of the
project; `incr`, one source of the middle layer edited in each version's own
project, then its build (55 stages at 50 x 20); `fresh`, a fresh copy of
the project built clean (not timed), then `--edits` incremental builds of it,
each after an edit as `incr`'s, their median timed: a project of each
version's own for a round alone, where `incr`'s two long-lived projects can
differ by up to 5% on the same code, from their places on the file system.
This checkout against itself, `fresh` gave 1.034 (10 rounds) and 1.022
(16): it tells apart changes of more than about 3% (the twenty-third
session's two, 0.887 and 0.903 over 16 and 20 rounds, showed in every one
of the 5 edits; docs/performance.md).  `sequence`, the reference's order
(../shared/bench/compare.py builds one tool after another, each in a fresh
project): a fresh project in the default mode built clean, `--edits`
no-ops and `--edits` incremental builds, untimed, then a fresh project in
`--mode` built the same, its incremental builds' median timed, and the
memory they took reported (the fall of /proc/meminfo's MemFree over them):
what a build finds is decided by what ran just before it
(docs/performance.md, "This machine's memory").  Each build is `python -m
pivotbuild -jJ -s` with the version's tree first on PYTHONPATH (its
pivotbuild, this interpreter and its libraries), or with `--served` the
installed `pivotbuild` (a copy: the launcher) and a build server of the
version's own, which its first build starts (and two more warm, untimed,
for `incr`); it prints the median wall time, the median CPU of the build's process tree (the stages included: what
`wait4` reports), their quartiles, and new / base.  `--settle SECONDS`
syncs and waits before each timed `fresh` or `incr` build: its outputs
are then on disk, as a user's are a while after a build (each with its
blocks: a rerun frees them, which ext4 mounted with `discard` waits for).
`--cold` (with `--served`) stops the version's servers before each clean
build of `clean` and `fresh` and before `sequence`'s first project, so
that the clean build runs in a process of its own and starts the server,
as the reference's first build does (`fresh` then runs `--edits` no-ops
before its incremental builds, as the reference does): what such a build
leaves for its server (cache/copying.py, `Left`) shows.

A small change moves a build by a few percent, less than the machine's
drift between two runs: only interleaved rounds like these tell it apart,
and then only as a median over many (docs/performance.md quotes them).
`--base` is a directory holding a `pivotbuild` package, or a git revision
of this checkout; `--new` defaults to this checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402

CHECKOUT = HERE.parent


@contextlib.contextmanager
def tree(spec: str, scratch: Path) -> Iterator[Path]:
    """The source tree `spec` names: a directory with a pivotbuild package, or
    a git revision of this checkout, checked out in a worktree for the run."""
    path = Path(spec)
    if (path / "pivotbuild" / "__init__.py").exists():
        extension(path)
        yield path.resolve()
        return
    where = scratch / f"tree-{len(list(scratch.iterdir()))}"
    git = ["git", "-C", str(CHECKOUT)]
    subprocess.run([*git, "worktree", "add", "--detach", "-q", str(where), spec], check=True)
    try:
        extension(where)
        yield where
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(where)], check=False)


def extension(code: Path) -> None:
    """The tree's C extensions (spawn.py's _clonespawn, stamptable.py's
    _stamps, poller.py's _nearwake) compiled in it where it has a source and
    not its build, as an install would compile them: a tree without them
    starts its stages by posix_spawn, checks its stamps in Python and waits
    in select.epoll, and would be timed so."""
    sources = [
        code / "pivotbuild/build/executors/_clonespawn.c",
        code / "pivotbuild/state/_stamps.c",
        code / "pivotbuild/build/executors/_nearwake.c",
    ]
    if any(s.is_file() and not list(s.parent.glob(f"{s.stem}.*.so")) for s in sources):
        print(f"ab.py: compiling the C extensions in {code}", file=sys.stderr)
        subprocess.run([sys.executable, str(CHECKOUT / "hatch_build.py"), str(code)], check=False)  # (it says why not)


class Served:
    """`--served`: a version's builds as a user's go by default, through the
    installed `pivotbuild` (the launcher, bin/launcher.c, where it was
    compiled; a copy of it and its `pivotbuild-python` in a directory of the
    version's own) and a build server of the version's own, in a short
    directory of its own (a socket's path has at most 107 bytes)."""

    def __init__(self, name: str, work: Path) -> None:
        installed = compare.find("pivotbuild")
        if installed is None:
            raise SystemExit("ab.py: --served needs the installed `pivotbuild` on PATH")
        self.bin = work / f"bin-{name}"
        self.bin.mkdir(parents=True, exist_ok=True)
        for script in ("pivotbuild", "pivotbuild-python"):
            if (Path(installed).parent / script).exists():
                shutil.copy2(Path(installed).parent / script, self.bin / script)
        self.servers = Path(tempfile.mkdtemp(prefix="pvab-", dir="/tmp"))

    def close(self) -> None:
        compare._stop_servers(self.servers)
        shutil.rmtree(self.servers, ignore_errors=True)


def build(code: Path, project: Path, jobs: int, served: Served | None = None) -> tuple[float, float]:
    """One build of `project` by the pivotbuild in `code`: (wall, CPU) seconds
    (`served`: through its server, the CPU the client's alone)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
    env["PIVOT_SERVER"] = "0"  # (each version in its own process: compare.in_process)
    cmd = [sys.executable, "-m", "pivotbuild", "-j", str(jobs), "-s"]
    if served is not None:
        env |= {"PIVOT_SERVER": "1", "PIVOT_SERVER_DIR": str(served.servers)}
        cmd = [str(served.bin / "pivotbuild"), "-j", str(jobs), "-s"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"ab.py: the build by {code} failed in {project}:\n{err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def _row(name: str, runs: list[tuple[float, float]], base: list[tuple[float, float]] | None) -> str:
    wall = sorted(r[0] for r in runs)
    cpu = sorted(r[1] for r in runs)
    q = len(wall) // 4
    line = f"  {name:<6}{statistics.median(wall) * 1e3:9.1f} ms  ({wall[q] * 1e3:.1f} to {wall[-1 - q] * 1e3:.1f})"
    line += f"{statistics.median(cpu) * 1e3:10.1f} ms"
    if base is not None:
        line += f"   new/base {statistics.median(wall) / statistics.median(r[0] for r in base):.3f}"
        line += f" wall, {statistics.median(cpu) / statistics.median(r[1] for r in base):.3f} CPU"
    return line


def main(argv: list[str] | None = None) -> int:
    compare.in_process()  # (what it times is pivotbuild's own process: no build server)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a directory with a pivotbuild package, or a git revision")
    ap.add_argument("--new", default=str(CHECKOUT), help="the same (default: this checkout)")
    ap.add_argument("--shape", choices=sorted(compare.COMMANDS), default="small")
    ap.add_argument("--mode", choices=("copy", "hardlink"), default="copy")
    ap.add_argument("--what", default="clean,incr", help="comma-separated, of clean, incr, fresh and sequence")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--edits", type=int, default=5, help="fresh: incremental builds a round (their median)")
    ap.add_argument("--width", type=int, default=50)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--dir", help="work here (default: a temporary directory)")
    ap.add_argument(
        "--served", action="store_true", help="build through each version's own build server (docs/server.md)"
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="with --served: each clean build (clean, fresh, and sequence's first project) in a process of its own, "
        "which starts the server (its servers stopped first), then (fresh) --edits no-ops, as the reference's first",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="fresh, incr: `sync`, then SECONDS of quiet, before each timed build (its outputs on disk)",
    )
    args = ap.parse_args(argv)
    what = args.what.split(",")
    if not set(what) <= {"clean", "incr", "fresh", "sequence"}:
        ap.error("--what takes clean, incr, fresh and sequence")
    if args.edits < 1:
        ap.error("--edits must be at least 1")
    stages = compare.lattice(args.width, args.depth)
    with contextlib.ExitStack() as stack:
        work = Path(args.dir) if args.dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pvab-")))
        work.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="trees-", dir=work))
        specs = {"base": args.base, "new": args.new}
        versions = {name: stack.enter_context(tree(spec, scratch)) for name, spec in specs.items()}
        for code in versions.values():  # (stale or missing bytecode would be timed too)
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(code / "pivotbuild")], check=True)
        served = {name: Served(name, work) for name in versions} if args.served else {}
        for one in served.values():
            stack.callback(one.close)
        template = work / "template"
        tool = "pivotbuild:hardlink" if args.mode == "hardlink" else "pivotbuild"
        compare.generate(template, stages, tool, args.shape)
        projects = {}
        if "incr" in what:
            for name, code in versions.items():
                projects[name] = work / f"incr-{name}"
                shutil.rmtree(projects[name], ignore_errors=True)
                shutil.copytree(template, projects[name], symlinks=True)
                build(code, projects[name], args.jobs, served.get(name))  # (its clean build, not timed)
                if name in served:  # (the server the clean build started, past its first builds)
                    compare._await_server(served[name].servers)
                    for warm in range(2):
                        compare.edit(projects[name], args.width, args.depth, -1 - warm)
                        build(code, projects[name], args.jobs, served[name])
        times: dict[tuple[str, str], list[tuple[float, float]]] = {(k, n): [] for k in what for n in versions}
        taken: dict[str, list[float]] = {n: [] for n in versions}  # (sequence: MB a round)
        for round_ in range(args.rounds):
            for kind in what:
                for name in random.sample(list(versions), len(versions)):
                    if kind == "clean":
                        fresh = work / "clean"
                        shutil.rmtree(fresh, ignore_errors=True)
                        shutil.copytree(template, fresh, symlinks=True)
                        time.sleep(0.5)  # (let the copy's writes settle a moment)
                        if args.cold and name in served:  # (as the reference's first build: see --cold)
                            _stop(served[name].servers)
                        times[kind, name].append(build(versions[name], fresh, args.jobs, served.get(name)))
                    elif kind == "sequence":
                        times[kind, name].append(
                            _sequence(versions[name], work, stages, args, served=served.get(name), taken=taken[name])
                        )
                    elif kind == "fresh":
                        fresh = work / "fresh"
                        shutil.rmtree(fresh, ignore_errors=True)
                        shutil.copytree(template, fresh, symlinks=True)
                        if args.cold and name in served:  # (as the reference's first build: see --cold)
                            _stop(served[name].servers)
                        build(versions[name], fresh, args.jobs, served.get(name))  # (its clean build, not timed)
                        for _ in range(args.edits if args.cold else 0):  # (the no-ops, not timed)
                            build(versions[name], fresh, args.jobs, served.get(name))
                        runs = []
                        for edit in range(args.edits):
                            compare.edit(fresh, args.width, args.depth, edit)
                            _settle(args.settle)
                            runs.append(build(versions[name], fresh, args.jobs, served.get(name)))
                        times[kind, name].append(
                            (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
                        )
                    else:
                        # (The round's edit, the same in both projects, so their
                        # histories match; their file systems' states still differ:
                        # an A/A run can show up to 5% between them, benchmarks/README.md.)
                        compare.edit(projects[name], args.width, args.depth, round_)
                        _settle(args.settle)
                        times[kind, name].append(build(versions[name], projects[name], args.jobs, served.get(name)))
        shutil.rmtree(work / "clean", ignore_errors=True)
        shutil.rmtree(work / "fresh", ignore_errors=True)
    print(
        f"{args.width * args.depth} stages ({args.shape}, {args.mode}), -j{args.jobs},"
        f" {args.rounds} interleaved rounds; base {args.base}, new {args.new}"
        + ("; through build servers (CPU: the client's alone)" if args.served else "")
    )
    print(f"  {'':<6}{'wall (median, quartiles)':>36}{'CPU':>13}")
    for kind in what:
        print(kind)
        print(_row("base", times[kind, "base"], None))
        print(_row("new", times[kind, "new"], times[kind, "base"]))
    if "sequence" in what:
        print("memory the incremental builds took (MB a round, median; each round)")
        for name in versions:
            print(f"  {name:<6}{statistics.median(taken[name]):9.0f}   {' '.join(f'{m:.0f}' for m in taken[name])}")
    return 0


def _stop(servers: Path) -> None:
    """Stop the servers in `servers`, and wait until they have gone (a build
    started meanwhile could still be offered to one)."""
    pids = []
    for lock in servers.glob("*.lock"):
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(lock.read_text()))
    compare._stop_servers(servers)
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.02)


def _settle(seconds: float) -> None:
    """`--settle`: everything written so far on disk, then a quiet moment."""
    if seconds:
        os.sync()
        time.sleep(seconds)


def _sequence(
    code: Path,
    work: Path,
    stages: list[compare.Stage],
    args: argparse.Namespace,
    *,
    served: Served | None,
    taken: list[float],
) -> tuple[float, float]:
    """`--what sequence`'s round (see the module): the median (wall, CPU) of
    the second project's incremental builds; the MB they took, to `taken`."""
    tools = ("pivotbuild", "pivotbuild:hardlink" if args.mode == "hardlink" else "pivotbuild")
    runs = []
    for i, tool in enumerate(tools):
        project = work / f"sequence-{i}"
        compare.generate(project, stages, tool, args.shape)
        if args.cold and served is not None and not i:  # (its clean build starts the server: see --cold)
            _stop(served.servers)
        for _ in range(1 + args.edits):  # (the clean build and the no-ops)
            build(code, project, args.jobs, served)
        free = _free_mb()
        for edit in range(args.edits):
            compare.edit(project, args.width, args.depth, edit)
            timed = build(code, project, args.jobs, served)
            if i:
                runs.append(timed)
        if i:
            taken.append(free - _free_mb())
    for i in range(len(tools)):
        shutil.rmtree(work / f"sequence-{i}", ignore_errors=True)
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _free_mb() -> float:
    """MemFree, in MB (0 where there is no /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemFree:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
