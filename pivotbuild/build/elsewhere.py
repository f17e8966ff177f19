"""Outputs left where an executor made them: `--no-checkout` (docs/dask.md).

With the Dask executor a stage's outputs are stored to the project's remote
by the worker that ran it; `--no-checkout` records them without fetching
them, for a CI job that only needs the remote filled.  The build then knows
such an output by its record alone: a stage reading it is decided on that
record (snapshot.take's `elsewhere`) and sent it through the remote, as it
would be sent a file on disk.

That works only for a stage that names the output exactly.  A dep on a file
inside a directory output, or a glob, is found by looking at the disk; so a
stage read that way has its outputs checked out as usual (`left_on_remote`).
So is a stage with a `cache: false` output (`pivotbuild pull` does not bring
those, so they would be nowhere here), or a `persist` or `incremental` one
(its stage builds on it next time, and finds it here).

A later --no-checkout build finds such outputs on the remote (transfer.holds)
instead of running their stages again: the Dask executor reports the stage
restored with the outputs its lockfile record holds for the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

from pivotbuild.graph import BuildGraph
from pivotbuild.model import Out, StageId


def left_on_remote(graph: BuildGraph, closure: Iterable[StageId]) -> frozenset[StageId]:
    """The stages of `closure` whose outputs may stay on the remote: every
    output cached, and every stage of `closure` reading one names it exactly
    (one pass over the deps: a fan-in of thousands must not cost its square)."""
    stages = list(closure)
    named: dict[StageId, frozenset[str]] = {}
    looked: set[tuple[str, bool]] = set()
    here: set[StageId] = set()  # read some other way: checked out
    for sid in stages:
        for dep in graph.stages[sid].deps:
            if (dep.path, dep.is_glob) in looked:
                continue
            looked.add((dep.path, dep.is_glob))
            for writer in graph.writers(dep.path, dep.is_glob):
                outs = named.get(writer)
                if outs is None:
                    outs = named[writer] = frozenset(out.path for out in graph.stages[writer].outs)
                if dep.is_glob or dep.path not in outs:
                    here.add(writer)
    return frozenset(sid for sid in stages if sid not in here and all(_leavable(out) for out in graph.stages[sid].outs))


def _leavable(out: Out) -> bool:
    """May this output be left on the remote?  Not one `pull` would not bring
    (cache: false), nor one its stage builds on next time (persist, incremental)."""
    return out.cache and not out.persist and not out.incremental


def left_message(count: int, all_pipelines: bool) -> str:
    """What a --no-checkout build says at its end."""
    outputs = "output was" if count == 1 else "outputs were"
    pull = "pivotbuild pull --all" if all_pipelines else "pivotbuild pull"
    return f"{count} {outputs} left on the remote (--no-checkout): '{pull}' brings them here"
