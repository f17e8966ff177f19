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
So is a stage with a `cache: false` output: `pivotbuild pull` does not bring
those, so they would be nowhere here.
"""

from __future__ import annotations

from collections.abc import Iterable

from pivotbuild.globs import glob_regex, may_match_under
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId


def left_on_remote(graph: BuildGraph, closure: Iterable[StageId]) -> frozenset[StageId]:
    """The stages of `closure` whose outputs may stay on the remote: every
    output cached, and every stage reading one names it exactly."""
    kept: set[StageId] = set()
    for sid in closure:
        stage = graph.stages[sid]
        outs = {out.path for out in stage.outs}
        if all(out.cache for out in stage.outs) and all(
            _names_exactly(graph, reader, sid, outs) for reader in graph.downstream_stages(sid)
        ):
            kept.add(sid)
    return frozenset(kept)


def _names_exactly(graph: BuildGraph, reader: StageId, writer: StageId, outs: set[str]) -> bool:
    """Does every dep of `reader` on an output of `writer` name that output itself?"""
    for dep in graph.stages[reader].deps:
        if dep.path in outs:
            continue
        if dep.is_glob:
            pattern = glob_regex(dep.path)
            if any(pattern.fullmatch(out) or may_match_under(dep.path, out) for out in outs):
                return False
        elif graph.producer(dep.path) == writer or _holds(dep.path, outs):
            return False
    return True


def _holds(directory: str, outs: set[str]) -> bool:
    """Is one of `outs` inside `directory` (a dep on a directory holding outputs)?"""
    prefix = directory.rstrip("/") + "/"
    return any(out.startswith(prefix) for out in outs)


def left_message(count: int) -> str:
    """What a --no-checkout build says at its end."""
    outputs = "output was" if count == 1 else "outputs were"
    return f"{count} {outputs} left on the remote (--no-checkout): 'pivotbuild pull' brings them here"
