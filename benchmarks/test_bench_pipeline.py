"""Benchmarks of the front end (parse and compile, build the graph) and of deciding
a no-op build, at 1,000 and 10,000 stages, on the layered DAG of
../shared/bench/gen.py (1k: width 50 x depth 20; 10k: width 100 x depth 100).

Stage (l, k) reads its source src/l_k.txt and, below the first layer, the outputs
of stages (l-1, k) and (l-1, (k+1) % width), exactly as gen.py lays it out.  Its
command is `echo ${stage} > $@` rather than gen.py's `cat $^ > $@`: gen.py's
outputs double in size with every layer (1.2 GB in all at width 50 x depth 20,
far more at depth 100), while these stay one line each and need no process
besides the shell, so the clean build the no-op benchmarks need stays cheap.
Parsing and compiling do not care which of the two commands a stage runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from compare import pivotbuild_command
from pytest_benchmark.fixture import BenchmarkFixture

from pivotbuild.build.options import BuildOptions
from pivotbuild.graph import BuildGraph
from pivotbuild.pivotfile.compiler import CompileOptions, compile_module
from pivotbuild.pivotfile.parser import parse
from pivotbuild.project import LoadOptions, load_project

SIZES = {"1k": (50, 20), "10k": (100, 100)}  # width, depth


def write_project(root: Path, width: int, depth: int) -> Path:
    """WIDTH x DEPTH stages; stage (l, k) depends on its source and two outputs of layer l-1."""
    (root / ".pivot").mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    lines = []
    for layer in range(depth):
        for k in range(width):
            (root / f"src/{layer}_{k}.txt").write_text(f"source {layer} {k}\n")
            deps = [f"src/{layer}_{k}.txt"]
            if layer:
                deps += [f"out/{layer - 1}_{k}.txt", f"out/{layer - 1}_{(k + 1) % width}.txt"]
            lines += [f"stage s{layer}_{k}:", f"    deps: {' '.join(deps)}", f"    outs: out/{layer}_{k}.txt"]
            lines += ["    run: echo ${stage} > $@", ""]
    (root / "Pivotfile").write_text("\n".join(lines))
    return root.resolve()


def build(root: Path, width: int, depth: int) -> None:
    """The clean build, once, with the real command line; then check outputs."""
    proc = subprocess.run(
        [*pivotbuild_command(), "-s", "-j2"], cwd=root, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"pivotbuild: {width * depth} ran, 0 up to date" in proc.stderr, proc.stderr[-2000:]
    for layer in (0, depth - 1):
        for k in (0, width - 1):
            assert (root / f"out/{layer}_{k}.txt").read_text() == f"s{layer}_{k}\n"


def shared(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]) -> Path:
    """Directory `name`, made once per test run by `make`.  Under xdist every worker
    has its own session fixtures, so the workers share it (made under a lock, in
    the run's base directory, as xdist's documentation suggests): the 10,000-stage
    build then happens once, not once per worker."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's, shared by its workers
    root = base / name
    with open(base / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = base / f"{name}.ready"
        if not ready.exists():
            shutil.rmtree(root, ignore_errors=True)  # a worker that failed to make it
            root.mkdir()
            make(root)
            ready.touch()
    return root.resolve()


def project(factory: pytest.TempPathFactory, size: str, built: bool) -> Path:
    width, depth = SIZES[size]

    def make(root: Path) -> None:
        write_project(root, width, depth)
        if built:
            build(root, width, depth)

    return shared(factory, f"{'b' if built else 'p'}{size}", make)


@pytest.fixture(scope="session")
def project_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project(tmp_path_factory, "1k", built=False)


@pytest.fixture(scope="session")
def project_10k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project(tmp_path_factory, "10k", built=False)


@pytest.fixture(scope="session")
def built_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A separate copy, built: the front-end benchmarks never see build state."""
    return project(tmp_path_factory, "1k", built=True)


@pytest.fixture(scope="session")
def built_10k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project(tmp_path_factory, "10k", built=True)


def projects(request: pytest.FixtureRequest, prefix: str, size: str) -> Path:
    path = request.getfixturevalue(f"{prefix}_{size}")
    assert isinstance(path, Path)
    return path


# -- front end ------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["1k", "10k"])
def test_parse_and_compile(benchmark: BenchmarkFixture, request: pytest.FixtureRequest, size: str) -> None:
    root = projects(request, "project", size)
    width, depth = SIZES[size]
    text = (root / "Pivotfile").read_text()
    options = CompileOptions(root, root)
    pipeline = benchmark.pedantic(lambda: compile_module(parse(text), options), rounds=5 if size == "1k" else 3)
    assert len(pipeline.stages) == width * depth


@pytest.mark.parametrize("size", ["1k", "10k"])
def test_build_graph(benchmark: BenchmarkFixture, request: pytest.FixtureRequest, size: str) -> None:
    root = projects(request, "project", size)
    width, depth = SIZES[size]
    stages = load_project(LoadOptions(root)).stages
    graph = benchmark.pedantic(BuildGraph, (stages,), rounds=5 if size == "1k" else 3)
    order = graph.order()
    assert len(order) == width * depth
    position = {sid: i for i, sid in enumerate(order)}
    last = stages[-1]  # s{depth-1}_{width-1}: reads out/{depth-2}_{width-1} and out/{depth-2}_0
    assert last.name == f"s{depth - 1}_{width - 1}"
    for producer in (f"out/{depth - 2}_{width - 1}.txt", f"out/{depth - 2}_0.txt"):
        sid = graph.producer(producer)
        assert sid is not None and position[sid] < position[last.id]


# -- deciding a no-op ------------------------------------------------------------------


@pytest.mark.parametrize("size", ["1k", "10k"])
def test_noop_cli(benchmark: BenchmarkFixture, request: pytest.FixtureRequest, size: str) -> None:
    """`pivotbuild -s` in a built project, as a user runs it: a new process each time."""
    root = projects(request, "built", size)
    width, depth = SIZES[size]
    command = [*pivotbuild_command(), "-s"]

    def noop() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60, check=False)

    proc = benchmark(noop)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"pivotbuild: 0 ran, {width * depth} up to date, 0 restored, 0 failed in ")


def test_one_stage_cli_1k(benchmark: BenchmarkFixture, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`pivotbuild -s` in a built 1,000-stage project after one source of the last
    layer changed: one stage runs.  What a build with work costs besides its
    stages (start-up, the plan, the lockfile, the seal, settling, saving); a
    plain build like this one runs without click (cli/direct.py)."""
    width, depth = SIZES["1k"]

    def make(root: Path) -> None:
        write_project(root, width, depth)
        build(root, width, depth)

    root = shared(tmp_path_factory, "one1k", make)  # its own copy: the no-op benchmarks need theirs untouched
    command = [*pivotbuild_command(), "-s"]
    edits = iter(range(1_000_000))

    def edit() -> tuple[tuple[()], dict[str, object]]:
        (root / f"src/{depth - 1}_0.txt").write_text(f"edit {next(edits)}\n")
        return (), {}

    def one() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60, check=False)

    proc = benchmark.pedantic(one, setup=edit, rounds=10)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"pivotbuild: 1 ran, {width * depth - 1} up to date, 0 restored, 0 failed in ")


@pytest.mark.parametrize("size", ["1k", "10k"])
def test_noop_fast_path(
    benchmark: BenchmarkFixture,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    size: str,
) -> None:
    """The fast path in-process (pivotbuild.cli.fast.try_fast): plan, seal, stat."""
    from pivotbuild.cli.fast import try_fast

    root = projects(request, "built", size)
    width, depth = SIZES[size]
    monkeypatch.chdir(root)
    assert benchmark(try_fast, ["-s"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(
        line.startswith(f"pivotbuild: 0 ran, {width * depth} up to date, 0 restored, 0 failed in ") for line in lines
    ), lines[:3]


def test_noop_decide_1k(benchmark: BenchmarkFixture, built_1k: Path) -> None:
    """The engine's full decision (`Engine.status`: load, graph, decide every stage)."""
    from pivotbuild.build.engine import Engine
    from pivotbuild.events import Event

    class Quiet:
        def handle(self, event: Event) -> None:
            pass

        def close(self) -> None:
            pass

    cwd = os.getcwd()
    options = BuildOptions(cwd=built_1k, jobs=2)
    rows = benchmark(Engine(Quiet()).status, options)
    assert len(rows) == 1000
    assert not any(decision.run for _, decision in rows)
    assert os.getcwd() == cwd
