"""Settled stages: the stages of a build that cannot change in it, so that
it counts them and does nothing else for them (see docs/state.md, "The
compiled plan and the up-to-date seal").  A build of 10,000 stages that
reruns 15 then spends its time on those 15, not on the 9,985 others."""

from __future__ import annotations

from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId


def unsettled(graph: BuildGraph, closure: list[StageId], sealed: frozenset[int]) -> tuple[list[StageId], list[StageId]]:
    """`closure` (in build order) split in two: the stages this build must
    decide, and the settled rest, each found `sealed` (plan indices) a
    moment ago with every stage upstream of it settled too.  No stage of
    this build writes what a settled stage reads, so it is up to date
    throughout; it keeps its seal, its record and its stat cache entries as
    they are, and costs the build nothing but its count.  (A file changed by
    hand while the build runs is the next build's to find, as it is for a
    stage decided before the change.)  A `py:` stage is never settled: its
    seal holds the project modules its code reads, which another stage of
    the build may write without an edge between them."""
    index_of, python = graph.index_of, graph.runs_python
    moving: set[StageId] = set()
    undecided: list[StageId] = []
    settled: list[StageId] = []
    for sid in closure:
        if (
            index_of(sid) not in sealed
            or python(sid)  # (its code may import what a stage writes: no edge says so)
            or not moving.isdisjoint(graph.upstream_stages(sid))
        ):
            moving.add(sid)
            undecided.append(sid)
        else:
            settled.append(sid)
    return undecided, settled
