"""Benchmarks of the front end and of deciding a no-op build (1,000 stages), on the
layered DAG of ../shared/bench/gen.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from pivotbuild.graph import BuildGraph
from pivotbuild.options import BuildOptions
from pivotbuild.pivotfile.compiler import CompileOptions, compile_module
from pivotbuild.pivotfile.parser import parse
from pivotbuild.project import LoadOptions, load_project


def write_project(root: Path, width: int, depth: int) -> Path:
    """WIDTH x DEPTH stages; stage (l, k) cats its source and two outputs of layer l-1."""
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
            lines += ["    run: cat $^ > $@", ""]
    (root / "Pivotfile").write_text("\n".join(lines))
    return root


@pytest.fixture(scope="session")
def project_1k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("p1k"), 50, 20)


def test_parse_and_compile_1k(benchmark: BenchmarkFixture, project_1k: Path) -> None:
    text = (project_1k / "Pivotfile").read_text()
    options = CompileOptions(project_1k, project_1k)
    pipeline = benchmark(lambda: compile_module(parse(text), options))
    assert len(pipeline.stages) == 1000


def test_build_graph_1k(benchmark: BenchmarkFixture, project_1k: Path) -> None:
    stages = load_project(LoadOptions(project_1k)).stages
    graph = benchmark(BuildGraph, stages)
    assert len(graph.order()) == 1000


def test_noop_decide_1k(benchmark: BenchmarkFixture, project_1k: Path) -> None:
    from pivotbuild.engine import Engine
    from pivotbuild.events import Event

    class Quiet:
        def handle(self, event: Event) -> None:
            pass

        def close(self) -> None:
            pass

    cwd = os.getcwd()
    options = BuildOptions(cwd=project_1k, jobs=2)
    assert Engine(Quiet()).build(options) == 0  # the clean build, once
    rows = benchmark(Engine(Quiet()).status, options)
    assert not any(decision.run for _, decision in rows)
    assert os.getcwd() == cwd
