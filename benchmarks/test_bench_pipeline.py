"""Benchmarks of the front end and of deciding a no-op build (1,000 stages)."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_benchmark.fixture import BenchmarkFixture

from pivotbuild.graph import BuildGraph
from pivotbuild.options import BuildOptions
from pivotbuild.pivotfile.compiler import CompileOptions, compile_module
from pivotbuild.pivotfile.parser import parse
from pivotbuild.project import LoadOptions, load_project


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
