"""Reporting a dependency cycle: every set of stages that need each other,
one shortest loop through each, located at the stage declared first, with a
note at each dep that closes a link.

A valid graph never comes here (graph.py orders it on plain dicts); only a
graph whose order came up short does, and only this imports networkx for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

from pivotbuild.errors import CycleError, Diagnostic
from pivotbuild.model import StageId

if TYPE_CHECKING:
    from pivotbuild.graph import BuildGraph


def cycle_error(graph: BuildGraph) -> CycleError:
    """The error for `graph`'s cycles: the first loop's stage names (the first
    repeated last), and one located problem per loop."""
    stage_graph = _stage_graph(graph)
    firsts = []
    for component in nx.strongly_connected_components(stage_graph):
        first = min(component, key=graph.index_of)
        if len(component) > 1 or stage_graph.has_edge(first, first):
            firsts.append((first, component))
    cycles, problems = [], []
    for first, component in sorted(firsts, key=lambda f: graph.index_of(f[0])):
        loop = _loop(stage_graph.subgraph(component), first, graph)
        names = [graph.label(s) for s in [*loop, first]]
        notes = [_link_note(graph, u, v) for u, v in zip(loop, [*loop[1:], first], strict=True)]
        if len(loop) == 1:
            message = f"dependency cycle: {' -> '.join(names)}: it reads a file it writes; drop that dep"
        else:
            message = (
                f"dependency cycle: {' -> '.join(names)} (each stage writes a file the next one reads); "
                "drop one of the deps noted below to break it"
            )
        cycles.append(names)
        problems.append(graph.located(graph.stages[first].loc, message, notes))
    return CycleError(cycles[0], problems)


def _stage_graph(graph: BuildGraph) -> nx.DiGraph[StageId]:
    """The stages alone, an edge from each to the stages reading what it writes."""
    g = graph.g
    sg: nx.DiGraph[StageId] = nx.DiGraph()
    sg.add_nodes_from(graph.stages)
    for sid in graph.stages:
        for art in g.successors(sid):
            for consumer in g.successors(art):
                assert isinstance(consumer, StageId)
                sg.add_edge(sid, consumer)
    return sg


def _link_note(graph: BuildGraph, u: StageId, v: StageId) -> Diagnostic:
    """Where `v` lists the file(s) of `u` it reads."""
    g = graph.g
    shared = sorted(str(a) for a in g.successors(u) if g.has_edge(a, v))
    stage = graph.stages[v]
    dep = next((d for d in stage.deps if d.path in shared), None)
    files = ", ".join(f"'{f}'" for f in shared)
    return graph.located(
        stage.at(dep.pos if dep else None),
        f"{graph.label(v)} reads {files}, written by {graph.label(u)}",
        severity="note",
    )


def _loop(component: nx.DiGraph[StageId], first: StageId, graph: BuildGraph) -> list[StageId]:
    """A shortest loop through `first` in a set of stages that all reach each
    other, from `first` up to the stage that leads back to it."""
    if component.has_edge(first, first):
        return [first]
    paths: dict[StageId, list[StageId]] = nx.single_source_shortest_path(component, first)
    back = min(component.predecessors(first), key=lambda u: (len(paths[u]), graph.index_of(u)))
    return paths[back]
