#!/usr/bin/env python3
"""Time pivotbuild beside make and ninja (and doit, snakemake) on one generated build.

The build is a lattice of WIDTH x DEPTH stages: stage (l, k) reads its source
src/l_k.txt and, below the first layer, the outputs of stages (l-1, k) and
(l-1, (k+1) % WIDTH), and writes out/l_k.txt. Every tool gets the same sources
and its own build file for the same stages, in a directory of its own.

    python3 benchmarks/compare.py                          # 1,000 stages (50 x 20), big outputs, -j2
    python3 benchmarks/compare.py --shape small --tools pivotbuild,make,ninja,doit,snakemake
    python3 benchmarks/compare.py --width 1000 --depth 10 --shape small    # 10,000 stages
    python3 benchmarks/compare.py --baseline ../old/.venv/bin/pivotbuild   # before/after a change, in one run
    python3 benchmarks/compare.py --tools pivotbuild,pivotbuild:hardlink,ninja,ninja+cp   # the storage floors

--shape big (the default): each stage `cat`s its deps, so outputs double with
every layer (about 1.2 GB per tool at 50 x 20: never raise --depth much) and
reading, hashing and storing data shows. --shape small: each stage runs
`md5sum` on its deps, so every output is at most three short lines and the
tool's own cost per stage shows.

Two references: `ninja+cp` (ninja, then one `cp --reflink=auto` of the files
it wrote: the least a build that keeps a cached copy must do) and
`pivotbuild:hardlink` (pivotbuild with `checkout = "hardlink"`).  pivotbuild
runs as it does by default (docs/server.md): its clean build, the project's
first, runs in its own process and starts a build server, which runs the
no-op and incremental builds after it (a server of this run's own, stopped
after); `pivotbuild:noserver` and `pivotbuild:hardlink:noserver` build each
time in a process of their own (PIVOT_SERVER=0, as in a CI job).

For each tool, one after the other in this process (so the machine's drift hits
all alike): `clean`, a build of every stage; `noop`, the same command again
(median of --runs); `incr`, one source of the middle layer edited, then the
build (median of --runs): the edit ripples down through part of the lattice.
Every output of every tool is then checked against what its deps say it must
hold, and the tools against each other. It prints seconds, and each time
divided by make's and by ninja's (a ratio below 1: faster than that tool).

Tools are looked up beside this Python, then on PATH (so `.venv/bin/python3
benchmarks/compare.py` finds the venv's pivotbuild and ninja: `pip install
ninja`, or `pip install '.[test]'`). doit and snakemake are not installed by
pivotbuild's extras: `pip install doit snakemake` in a venv of their own and
put it on PATH. The machines are shared and noisy: quote ratios from one run.

`--orders N` runs every tool N times, the order of the tools reversed every
other time, and gives each figure's median over them: on these machines a
tool's clean build depends on which tools ran before it (the files they
created, the memory they took), so a single run favours some tools.

`--warm MB`: right before each clean and incremental build, MB megabytes
of memory are written and freed (not timed), so that every tool's build
finds as much memory freed a moment ago: on this project's machines new
memory costs ten times memory just freed, and without it the order of the
tools decides the figures of the builds that take new memory (clean
builds, hardlink mode's incremental build). It slows the builds that do
not: read those from a plain run (docs/performance.md, "This machine's
memory"; `benchmarks/memtemp.py` measures the cost).

`--tidy`: once a tool's figures are taken and its outputs checked, its
project (and `ninja+cp`'s copies) is removed and the file system synced
(`sync`), so that the next tool starts where this one did: the memory the
last outputs held just freed, nothing of them left to write back.  With
`--orders N` it gives each tool the same conditions, the nearest these
machines come to equal ones (docs/performance.md, "Targets", the
twenty-fourth session): without it the first tool of a run finds the
machine quiet, the next ones the previous tools' files and dirty pages.

`--settle SECONDS`: before each incremental build, `sync`, then SECONDS
of quiet: every tool's build then finds the earlier builds' data on disk,
as a user's build does a while after the one before, rather than the
reference's, a second or two after a clean build that left gigabytes for
the kernel to write back. pivotbuild's fsyncs (STATE.md) wait for any
writeback under way as they end each build; make's and ninja's builds
sync nothing (docs/performance.md, the thirty-fourth session).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
COMMANDS = {"big": "cat", "small": "md5sum"}


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    out: str


def lattice(width: int, depth: int) -> list[Stage]:
    stages = []
    for layer in range(depth):
        for k in range(width):
            deps = [f"src/{layer}_{k}.txt"]
            if layer:
                deps += [f"out/{layer - 1}_{k}.txt", f"out/{layer - 1}_{(k + 1) % width}.txt"]
            stages.append(Stage(f"s{layer}_{k}", tuple(deps), f"out/{layer}_{k}.txt"))
    return stages


# -- build files, one writer per tool -----------------------------------------------------


def write_pivotbuild(root: Path, stages: list[Stage], cmd: str) -> None:
    blocks = [
        f"stage {s.name}:\n    deps: {' '.join(s.deps)}\n    outs: {s.out}\n    run: {cmd} $^ > $@\n" for s in stages
    ]
    (root / "Pivotfile").write_text("\n".join(blocks))
    (root / ".pivot").mkdir()


def write_make(root: Path, stages: list[Stage], cmd: str) -> None:
    rules = [f"all: {' '.join(s.out for s in stages)}\n"]
    rules += [f"{s.out}: {' '.join(s.deps)}\n\t{cmd} $^ > $@\n" for s in stages]
    (root / "Makefile").write_text("\n".join(rules))


def write_ninja(root: Path, stages: list[Stage], cmd: str) -> None:
    lines = ["rule stage", f"  command = {cmd} $in > $out", ""]
    lines += [f"build {s.out}: stage {' '.join(s.deps)}" for s in stages]
    (root / "build.ninja").write_text("\n".join(lines) + "\n")


def write_doit(root: Path, stages: list[Stage], cmd: str) -> None:
    graph = [(s.name, list(s.deps), s.out) for s in stages]
    (root / "dodo.py").write_text(
        f"GRAPH = {graph!r}\n"
        "DOIT_CONFIG = {'verbosity': 0}\n\n"
        "def task_stage():\n"
        "    for name, deps, out in GRAPH:\n"
        "        yield {'name': name, 'file_dep': deps, 'targets': [out],\n"
        f"               'actions': ['{cmd} ' + ' '.join(deps) + ' > ' + out]}}\n"
    )


def write_snakemake(root: Path, stages: list[Stage], cmd: str) -> None:
    deps = {s.out: list(s.deps) for s in stages}
    (root / "Snakefile").write_text(
        f"DEPS = {deps!r}\n\n"
        "rule all:\n"
        f"    input: {[s.out for s in stages]!r}\n\n"
        "rule stage:\n"
        "    input: lambda wc: DEPS['out/' + wc.name + '.txt']\n"
        "    output: 'out/{name}.txt'\n"
        f"    shell: '{cmd} {{input}} > {{output}}'\n"
    )


def write_pivotbuild_hardlink(root: Path, stages: list[Stage], cmd: str) -> None:
    write_pivotbuild(root, stages, cmd)
    (root / ".pivot" / "config.toml").write_text('[core]\ncheckout = "hardlink"\n')


@dataclass(frozen=True)
class Tool:
    program: str
    write: Callable[[Path, list[Stage], str], None]
    args: Callable[[int], list[str]]
    # The command, given the program found and -j (default: the program and `args`).
    command: Callable[[str, int], list[str]] | None = None
    # pivotbuild: through a build server of the run's own, started by its clean
    # build (True: as by default), or each build in its own process (False);
    # None: not pivotbuild.
    server: bool | None = None


def _ninja_then_cp(ninja: str, jobs: int) -> list[str]:
    """ninja, then one copy of the files it wrote into ../cpcache (a reflink
    where the file system has them): the least a build that keeps a cached
    copy of its outputs must do, the floor for pivotbuild's default mode."""
    return [
        "sh",
        "-c",
        f"touch .mark && '{ninja}' -j {jobs} >/dev/null && mkdir -p ../cpcache && "
        "find out -type f -newer .mark -print0 | xargs -0 -r cp --reflink=auto --parents -t ../cpcache",
    ]


TOOLS = {
    "pivotbuild": Tool("pivotbuild", write_pivotbuild, lambda j: ["-j", str(j), "-s"], server=True),
    # pivotbuild with `checkout = "hardlink"`: outputs stored by link, no byte copied.
    "pivotbuild:hardlink": Tool("pivotbuild", write_pivotbuild_hardlink, lambda j: ["-j", str(j), "-s"], server=True),
    # Each build in a pivotbuild process of its own (PIVOT_SERVER=0).
    "pivotbuild:noserver": Tool("pivotbuild", write_pivotbuild, lambda j: ["-j", str(j), "-s"], server=False),
    "pivotbuild:hardlink:noserver": Tool(
        "pivotbuild", write_pivotbuild_hardlink, lambda j: ["-j", str(j), "-s"], server=False
    ),
    "make": Tool("make", write_make, lambda j: ["-j", str(j), "-s"]),
    "ninja": Tool("ninja", write_ninja, lambda j: ["-j", str(j)]),
    "ninja+cp": Tool("ninja", write_ninja, lambda j: ["-j", str(j)], _ninja_then_cp),
    "doit": Tool("doit", write_doit, lambda j: ["-n", str(j)]),
    "snakemake": Tool("snakemake", write_snakemake, lambda j: ["--cores", str(j), "--quiet", "all", "--nolock"]),
}


def find(program: str) -> str | None:
    """Beside this Python (a venv's, even if not activated), else on PATH."""
    return shutil.which(program, path=str(Path(sys.executable).parent)) or shutil.which(program)


def in_process() -> None:
    """This benchmark's builds run in pivotbuild processes of their own, not
    through a build server (PIVOT_SERVER=0, for the processes it starts):
    what it measures is one process's work (docs/server.md)."""
    os.environ["PIVOT_SERVER"] = "0"


def pivotbuild_command() -> list[str]:
    """The installed `pivotbuild` script (what a user runs), else `python -m pivotbuild`."""
    found = find("pivotbuild")
    return [found] if found else [sys.executable, "-m", "pivotbuild"]


def interpreter(script: str) -> str:
    """The Python a script such as `pivotbuild` runs under (its #! line; where
    `pivotbuild` is the launcher, bin/launcher.c, its `pivotbuild-python`'s)."""
    beside = Path(script).with_name("pivotbuild-python")
    first = (beside if beside.exists() else Path(script)).read_bytes()[:4096].split(b"\n")[0]
    return first[2:].strip().decode() if first.startswith(b"#!") else sys.executable


def generate(root: Path, stages: list[Stage], tool: str, shape: str) -> None:
    """The sources and `tool`'s build file in root (made afresh)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    (root / "out").mkdir()
    for s in stages:
        layer, k = s.name[1:].split("_")
        (root / s.deps[0]).write_text(f"source {layer} {k}\n")
    TOOLS[tool].write(root, stages, COMMANDS[shape])


# -- timing and checking ------------------------------------------------------------------


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"compare.py: {' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    return elapsed


def _await_server(where: Path) -> None:
    """Until the server the clean build started listens (at most 20 s)."""
    deadline = time.monotonic() + 20
    while not list(where.glob("*.sock")):
        if time.monotonic() > deadline:
            raise SystemExit(f"compare.py: no build server started in {where}")
        time.sleep(0.05)


def _stop_servers(where: Path) -> None:
    """Stop the servers listening in `where` (their lock files name them)."""
    for lock in where.glob("*.lock") if where.exists() else ():
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(lock.read_text()), signal.SIGTERM)


def edit(root: Path, width: int, depth: int, i: int) -> None:
    """Append a line to one source of the middle layer (another each time)."""
    path = root / f"src/{depth // 2}_{(i * 7) % width}.txt"
    with path.open("a") as f:
        f.write(f"edit {i}\n")
    # Stamped with the fine clock: the file system's coarse one can give the
    # edit the very mtime of an output written moments ago, and make, which
    # compares mtimes, would then miss it (only a tiny run, as the smoke test's, is that fast).
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def digest(path: Path, parts: Iterable[bytes] | None = None) -> str:
    """The file's digest, or (with parts) the digest it must have."""
    h = hashlib.blake2b(digest_size=16)
    for chunk in parts if parts is not None else _chunks(path):
        h.update(chunk)
    return h.hexdigest()


def check_outputs(root: Path, stages: list[Stage], shape: str, tool: str) -> dict[str, str]:
    """Each output holds what its deps (as they are on disk) say it must; return
    every output's digest, to compare the tools with each other."""
    digests = {}
    for s in stages:
        out = root / s.out
        if not out.is_file():
            raise SystemExit(f"compare.py: {tool} did not write {s.out}")
        if shape == "small":
            lines = [f"{hashlib.md5(b''.join(_chunks(root / d))).hexdigest()}  {d}\n" for d in s.deps]
            want = digest(out, ["".join(lines).encode()])
        else:
            want = digest(out, (c for d in s.deps for c in _chunks(root / d)))
        got = digest(out)
        if got != want:
            raise SystemExit(f"compare.py: {tool} wrote a wrong {s.out}")
        digests[s.out] = got
    return digests


@dataclass
class Result:
    clean: float
    noop: float
    incr: float


def write_out(fd: int, size: int) -> None:
    """Write `size` bytes (whole MiB) to `fd`."""
    block = memoryview(os.urandom(CHUNK))
    for _ in range(size // CHUNK):
        done = 0
        while done < CHUNK:
            done += os.write(fd, block[done:])


def warm(mb: int) -> None:
    """Free `mb` megabytes of memory right before a timed build (`--warm`):
    written into an anonymous in-memory file (`memfd_create`: nothing goes to
    disk, and it goes with the process however that ends), then closed, so
    that the pages it frees are the ones the build takes.  Linux only."""
    if not mb:
        return
    fd = os.memfd_create("pvcompare-warm", os.MFD_CLOEXEC)
    try:
        write_out(fd, mb << 20)
    finally:
        os.close(fd)


def _median(results: list[Result]) -> Result:
    """Each figure's median over `results` (one tool's, from several runs)."""
    return Result(*(statistics.median(getattr(r, k) for r in results) for k in ("clean", "noop", "incr")))


def measure(
    tools: list[str],
    *,
    width: int,
    depth: int,
    shape: str,
    jobs: int,
    runs: int,
    workdir: Path,
    free: int = 0,
    tidy: bool = False,
    settle: float = 0.0,
) -> tuple[dict[str, Result], dict[str, dict[str, str]]]:
    """Build, time and check each tool's copy of the lattice under workdir; return
    the times and each tool's output digests.  `free`: megabytes freed
    before each clean and incremental build (see `warm`); `tidy`: each
    tool's project removed once checked, then `sync` (see `--tidy`);
    `settle`: `sync`, then that many seconds, before each incremental
    build (see `--settle`)."""
    stages = lattice(width, depth)
    results, digests = {}, {}
    for tool in tools:
        program = find(TOOLS[tool].program)
        if program is None:
            raise SystemExit(f"compare.py: {TOOLS[tool].program} is not on PATH (see --help for how to install it)")
        spec = TOOLS[tool]
        cmd = spec.command(program, jobs) if spec.command else [program, *spec.args(jobs)]
        root = workdir / tool.replace(":", "-")
        generate(root, stages, tool, shape)
        # Each tool's own servers (one stopped may linger), in a short path (a socket's has at most 107 bytes).
        servers = workdir / f"sv{tools.index(tool)}"
        env = (
            None
            if spec.server is None
            else {**os.environ, "PIVOT_SERVER": "1", "PIVOT_SERVER_DIR": str(servers)}
            if spec.server
            else {**os.environ, "PIVOT_SERVER": "0"}
        )
        try:
            warm(free)
            clean = timed(cmd, root, env)
            if spec.server:
                _await_server(servers)
            noop = [timed(cmd, root, env) for _ in range(runs)]
            incr = []
            for i in range(runs):
                edit(root, width, depth, i)
                if settle:
                    os.sync()
                    time.sleep(settle)
                warm(free)
                incr.append(timed(cmd, root, env))
        finally:
            if spec.server:
                _stop_servers(servers)
        results[tool] = Result(clean, statistics.median(noop), statistics.median(incr))
        digests[tool] = check_outputs(root, stages, shape, tool)
        if tidy:
            shutil.rmtree(root)
            shutil.rmtree(workdir / "cpcache", ignore_errors=True)  # (ninja+cp's copies)
            os.sync()
    first = next(iter(digests.values()))
    for tool, d in digests.items():
        if d != first:
            wrong = sorted(k for k in d if d[k] != first.get(k))
            raise SystemExit(f"compare.py: {tool} and {tools[0]} wrote different outputs: {wrong[:5]}")
    return results, digests


def table(
    results: dict[str, Result],
    width: int,
    depth: int,
    shape: str,
    jobs: int,
    *,
    warm: int = 0,
    orders: int = 1,
    tidy: bool = False,
    settle: float = 0.0,
) -> str:
    refs = [r for r in ("make", "ninja") if r in results]
    how = f", {warm} MB freed before each clean and incremental build" if warm else ""
    if tidy:
        how += ", each project removed and synced before the next tool's"
    if settle:
        how += f", synced and {settle:g} s of quiet before each incremental build"
    if orders > 1:
        how += f", medians of {orders} runs of every tool (the order reversed every other run)"
    head = f"{'tool':<12}{'clean':>9}{'noop':>9}{'incr':>9}"
    head += "".join(f"   {'/ ' + r + ' (clean noop incr)':<28}" for r in refs)
    lines = [
        f"{width * depth} stages ({width} x {depth}, {shape} outputs), -j{jobs}{how};"
        " seconds (no-op and incremental: medians); ratio = time / the other tool's",
        head.rstrip(),
    ]
    for tool, r in results.items():
        line = f"{tool:<12}{r.clean:>9.3f}{r.noop:>9.3f}{r.incr:>9.3f}"
        for ref in refs:
            base = results[ref]
            ratios = f"{r.clean / base.clean:.2f} {r.noop / base.noop:.2f} {r.incr / base.incr:.2f}"
            line += f"   {ratios:<28}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default="pivotbuild,make,ninja", help=f"comma-separated, of {', '.join(TOOLS)}")
    ap.add_argument(
        "--shape", choices=COMMANDS, default="big", help="big: cat (outputs double per layer); small: md5sum"
    )
    ap.add_argument("--width", type=int, default=50, help="stages per layer (at least 2)")
    ap.add_argument("--depth", type=int, default=20, help="layers")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5, help="no-op and incremental builds per tool (medians)")
    ap.add_argument(
        "--dir", type=Path, help="build here and keep the projects (default: a temporary directory; --tidy keeps none)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument(
        "--warm",
        type=int,
        default=0,
        metavar="MB",
        help="free this much memory right before each clean and incremental build",
    )
    ap.add_argument(
        "--orders",
        type=int,
        default=1,
        metavar="N",
        help="run every tool N times, the order of the tools reversed every other time, and give the medians",
    )
    ap.add_argument(
        "--tidy",
        action="store_true",
        help="remove each tool's project and sync once its figures are taken, before the next tool's",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="`sync`, then this many seconds of quiet, before each incremental build",
    )
    ap.add_argument(
        "--baseline",
        metavar="PROGRAM",
        help="also time this pivotbuild executable (another checkout's, e.g. .venv/bin/pivotbuild), as 'baseline'",
    )
    args = ap.parse_args(argv)
    tools = args.tools.split(",")
    if args.baseline:
        TOOLS["baseline"] = Tool(
            str(Path(args.baseline).resolve()), write_pivotbuild, TOOLS["pivotbuild"].args, server=True
        )
        at = tools.index("pivotbuild") + 1 if "pivotbuild" in tools else len(tools)
        tools.insert(at, "baseline")
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tool {unknown[0]!r}; choose from {', '.join(TOOLS)}")
    if args.width < 2 or args.depth < 1 or args.runs < 1 or args.orders < 1 or args.warm < 0:
        ap.error("--width must be at least 2, --depth, --runs and --orders at least 1, --warm at least 0")
    if args.warm and not hasattr(os, "memfd_create"):
        ap.error("--warm needs memfd_create (Linux)")
    with tempfile.TemporaryDirectory(prefix="pvcompare-") as tmp:
        workdir = args.dir.resolve() if args.dir else Path(tmp)
        each = []  # (each order's results: the tools forward, then reversed, ...)
        for n in range(args.orders):
            each.append(
                measure(
                    tools if n % 2 == 0 else tools[::-1],
                    width=args.width,
                    depth=args.depth,
                    shape=args.shape,
                    jobs=args.jobs,
                    runs=args.runs,
                    workdir=workdir / f"order{n}" if args.orders > 1 else workdir,
                    free=args.warm,
                    tidy=args.tidy,
                    settle=args.settle,
                )[0]
            )
    results = {t: _median([e[t] for e in each]) for t in tools}
    if args.json:
        keys = ("width", "depth", "shape", "jobs", "runs", "warm", "orders", "tidy", "settle")
        data = {k: getattr(args, k) for k in keys}
        orders = [{t: vars(r) for t, r in e.items()} for e in each]
        print(json.dumps({**data, "results": {t: vars(r) for t, r in results.items()}, "each_order": orders}))
    else:
        how = {"warm": args.warm, "orders": args.orders, "tidy": args.tidy, "settle": args.settle}
        print(table(results, args.width, args.depth, args.shape, args.jobs, **how))
    return 0


if __name__ == "__main__":
    sys.exit(main())
