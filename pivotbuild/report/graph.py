"""The stage graph as text, Graphviz dot, or Mermaid."""

from __future__ import annotations

import json
from collections.abc import Sequence

from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId


def _edges(graph: BuildGraph, stages: Sequence[StageId]) -> list[tuple[StageId, StageId]]:
    keep = set(stages)
    return [(a, b) for a, b in graph.stage_edges() if a in keep and b in keep]


def to_text(graph: BuildGraph, stages: Sequence[StageId]) -> str:
    """One line per stage in build order: `stage <- the stages it reads from`."""
    keep = set(stages)
    width = max((len(graph.label(s)) for s in stages), default=0)
    lines = []
    for sid in stages:
        ups = [graph.label(u) for u in graph.upstream_stages(sid) if u in keep]
        label = graph.label(sid)
        lines.append(f"{label:<{width}}  <- {', '.join(ups)}" if ups else label)
    return "\n".join(lines)


def to_dot(graph: BuildGraph, stages: Sequence[StageId]) -> str:
    lines = ["digraph pivotbuild {", "  rankdir=LR;", "  node [shape=box];"]
    lines += [f"  {json.dumps(graph.label(s))};" for s in stages]
    lines += [f"  {json.dumps(graph.label(a))} -> {json.dumps(graph.label(b))};" for a, b in _edges(graph, stages)]
    lines.append("}")
    return "\n".join(lines)


def to_mermaid(graph: BuildGraph, stages: Sequence[StageId]) -> str:
    ids = {s: f"s{i}" for i, s in enumerate(stages)}
    lines = ["flowchart LR"]
    for sid, node in ids.items():
        label = graph.label(sid).replace('"', "#quot;")
        lines.append(f'  {node}["{label}"]')
    lines += [f"  {ids[a]} --> {ids[b]}" for a, b in _edges(graph, stages)]
    return "\n".join(lines)


FORMATS = {"text": to_text, "dot": to_dot, "mermaid": to_mermaid}
