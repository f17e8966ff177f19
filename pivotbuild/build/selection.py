"""Which stages a command acts on: its targets, else the pipeline's `default`, else all."""

from __future__ import annotations

from collections.abc import Sequence

from pivotbuild.errors import Diagnostic, PivotfileError, TargetError
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId
from pivotbuild.project import Project


def open_graph(project: Project) -> BuildGraph:
    """The validated graph of every stage of the project."""
    return BuildGraph(project.stages, project.current_dir, project.line)


def selected(project: Project, graph: BuildGraph, targets: Sequence[str]) -> list[StageId]:
    """The stages named by `targets` (not their dependencies), in build order.

    With no targets: the main pipeline's `default` targets, else every stage
    of the build (included pipelines and, with `--all`, every pipeline).  Raises
    TargetError, or PivotfileError for a bad `default`.
    """
    cwd = project.cwd_dir
    if targets:
        return graph.order(graph.select(targets, cwd))
    main = project.main
    if main is not None and main.default:
        chosen: list[StageId] = []
        problems: list[Diagnostic] = []
        for ref in main.default:
            try:
                chosen.extend(graph.select([ref.text], main.dir))
            except TargetError as exc:
                problems.append(Diagnostic(ref.loc, f"default: {exc.message}", project.line(ref.loc)))
        if problems:
            raise PivotfileError(problems)
        return graph.order(chosen)
    return graph.order()
