"""Settled stages: the stages of a build that cannot change in it, so that
it counts them and does nothing else for them (see docs/state.md, "The
compiled plan and the up-to-date seal").  A build of 10,000 stages that
reruns 15 then spends its time on those 15, not on the 9,985 others."""

from __future__ import annotations

from itertools import compress

from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId
from pivotbuild.targets import closure as closure_of


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
    # The stages that move are those found unsealed (or `py:`) and every
    # stage downstream of one: found from them along the edges, so a build
    # that reruns 55 stages of 1,000 walks those 55, and passes over the rest
    # in C (a turn of a loop here for each stage was 0.7 ms of such a build).
    # `closure` holds every stage upstream of each of its stages, so a stage
    # of it is reached only through stages of it.
    index = graph.index_map
    members = set(closure)
    unsealed = members.difference(compress(closure, map(sealed.__contains__, map(index.__getitem__, closure))))
    seeds = unsealed.union(members.intersection(graph.python_ids))
    if not seeds:
        return [], list(closure)
    moving = closure_of(seeds, graph.downstream_stages)
    undecided = [sid for sid in closure if sid in moving]
    settled = [sid for sid in closure if sid not in moving]
    return undecided, settled
