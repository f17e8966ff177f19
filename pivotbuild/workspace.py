"""The workspace against the lockfile: verify it, check outputs out of the cache, clean them.

Each function holds the project lock, like a build, and reports through
events; none of them runs a stage.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from pivotbuild.build.decider import PENDING_COMMIT
from pivotbuild.build.engine import Engine
from pivotbuild.build.options import BuildOptions
from pivotbuild.cache.outputs import OutputCache
from pivotbuild.cache.store import Cache, CorruptObject, MissingObject
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Stage, StageId
from pivotbuild.project import Project
from pivotbuild.state.kinds import ABSENT, DIR
from pivotbuild.state.records import FileRecord
from pivotbuild.state.snapshot import file_record
from pivotbuild.state.store import StateStore
from pivotbuild.structs import field, struct


@struct
class Difference:
    stage: Stage
    label: str
    path: str
    what: str  # "missing", "modified", "not recorded", PENDING_COMMIT
    # Whether `checkout` can put the recorded version back: not for a
    # `cache=false` output, nor for a pending result (not cached until commit).
    restorable: bool = True
    current: FileRecord | None = None  # what is on disk now (for "modified")


def _chosen(engine: Engine, options: BuildOptions) -> tuple[Project, BuildGraph, list[Stage]]:
    """The stages a command acts on: the named ones; without targets, what a
    plain build covers (the `default` targets and every stage they need, else
    every stage), so `pivotbuild && pivotbuild verify` checks what was built."""
    project, graph, targets = engine.load(options)
    ids = targets if options.targets else graph.upstream(targets)
    return project, graph, [graph.stages[s] for s in ids]


@struct
class CheckoutReport:
    restored: list[str] = field(default_factory=list)
    refused: list[Difference] = field(default_factory=list)  # modified: needs --force
    unavailable: list[str] = field(default_factory=list)  # not in the cache


def differences(store: StateStore, root: Path, stages: list[Stage], graph: BuildGraph) -> list[Difference]:
    """Outputs of `stages` whose content on disk is not what the lockfile records.
    A stage with a pending (--no-commit) result is compared with that result:
    an output that matches it is PENDING_COMMIT (the lockfile does not have it yet)."""
    found = []
    for stage in stages:
        record = store.record(stage)
        pending = store.pending(stage) is not None
        label = graph.label(stage.id)
        recorded = {o.path: o for o in record.outs} if record else {}
        for out in stage.outs:
            want = recorded.get(out.path)
            have = file_record(root, out.path, store.statcache(stage))
            restorable = out.cache and not pending
            if want is None:
                found.append(Difference(stage, label, out.path, "not recorded", False))
            elif have.kind == ABSENT:
                found.append(Difference(stage, label, out.path, "missing", restorable))
            elif (have.kind, have.hash) != (want.kind, want.hash):
                found.append(Difference(stage, label, out.path, "modified", restorable, have))
            elif pending:
                found.append(Difference(stage, label, out.path, PENDING_COMMIT, False))
    return found


def verify(engine: Engine, options: BuildOptions) -> list[Difference]:
    """Recorded outputs of the selected stages that differ on disk from the lockfile."""
    project, graph, stages = _chosen(engine, options)
    with engine.state(project, options) as store:
        return differences(store, project.root, stages, graph)


def checkout(engine: Engine, options: BuildOptions, force: bool) -> CheckoutReport:
    """Restore recorded outputs from the cache.  A modified output whose content
    is in the cache too (another branch's result, after `git checkout`) is
    replaced; one whose content exists nowhere else is left alone (and listed)
    unless `force`.  Only the local cache is asked, not a remote: asking costs
    a round trip per output.  An unrecorded output, or one declared
    `cache=false` (it is never in the cache; the next build makes it), is not
    touched."""
    project, graph, stages = _chosen(engine, options)
    report = CheckoutReport()
    outputs = OutputCache(project.root, engine.warn)
    cache = outputs.cache
    with engine.state(project, options) as store:
        for diff in differences(store, project.root, stages, graph):
            out = next(o for o in diff.stage.outs if o.path == diff.path)
            if diff.what in ("not recorded", PENDING_COMMIT) or not out.cache:
                continue  # (a pending output is the newest result: it is not in the cache yet)
            if diff.what == "modified" and not force and not _kept(cache, diff.current):
                report.refused.append(diff)
                continue
            record = store.record(diff.stage)
            assert record is not None
            rec = next(o for o in record.outs if o.path == diff.path)
            dest = project.root / diff.path
            try:
                if rec.kind == DIR:
                    cache.checkout_dir(rec.hash, dest, outputs.mode_for(out))
                else:
                    cache.checkout_file(rec.hash, dest, outputs.mode_for(out), rec.executable)
            except CorruptObject as exc:
                engine.warn(f"{diff.path}: cache object {exc} was corrupt and has been removed; it was not checked out")
                report.unavailable.append(diff.path)
                continue
            except MissingObject:
                report.unavailable.append(diff.path)
                continue
            report.restored.append(diff.path)
    return report


def _kept(cache: Cache, have: FileRecord | None) -> bool:
    """Whether the content `have` describes is all in the cache, so replacing it
    loses nothing."""
    if have is None or not cache.has(have.hash):
        return False
    if have.kind != DIR:
        return True
    try:
        entries = cache.read_manifest(have.hash)
    except (CorruptObject, MissingObject):
        return False
    return all(cache.has(e.hash) for e in entries)


def clean(engine: Engine, options: BuildOptions) -> list[str]:
    """Delete the outputs of the selected stages; returns the paths removed."""
    project, _, stages = _chosen(engine, options)
    removed = []
    with engine.state(project, options):
        for stage in stages:
            for out in stage.outs:
                path = project.root / out.path
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
                else:
                    continue
                removed.append(out.path)
    return removed


@struct
class TransferSet:
    project: Project
    outs: list[FileRecord]  # the recorded (cached) outputs of the chosen stages
    stages: list[StageId]
    # Those of `outs` the workspace lacks or differs from: checkout would read
    # their objects next, so fetch verifies their local copies, not trusts them.
    stale: list[FileRecord]


def transfer_set(engine: Engine, options: BuildOptions, *, stale: bool = False, entries: bool = False) -> TransferSet:
    """What push and fetch move for the chosen stages; with `stale`, which
    outputs the workspace lacks (else `stale` is empty).  With `entries` (a
    push), the run cache gets an entry for each stage's current record, as for
    the records it holds already: builds write entries only for the records
    they replace (see Recorder), and the remote serves clones that have no
    lockfile."""
    project, graph, stages = _chosen(engine, options)
    outs: list[FileRecord] = []
    outputs = OutputCache(project.root, engine.warn) if entries else None
    with engine.state(project, options) as store:
        for stage in stages:
            record = store.record(stage)
            if record is not None:
                outs.extend(o for o, decl in zip(record.outs, _cached(stage, record.outs), strict=True) if decl)
                if outputs is not None and outputs.restorable(stage, record.outs):
                    outputs.remember(stage, record)
        diffs = differences(store, project.root, stages, graph) if stale else []
        differ = {d.path for d in diffs if d.what != "not recorded"}
    return TransferSet(project, outs, [s.id for s in stages], [o for o in outs if o.path in differ])


def _cached(stage: Stage, outs: tuple[FileRecord, ...]) -> list[bool]:
    """For each recorded output, whether it is cached (`cache=false` ones never travel)."""
    flags = {o.path: o.cache for o in stage.outs}
    return [flags.get(o.path, False) for o in outs]


@struct(frozen=True, slots=True)
class Refusal:
    stage: str
    why: str  # what to tell the user, after the stage's name (the CLI adds how to fix it)


def commit(engine: Engine, options: BuildOptions) -> tuple[list[str], list[Refusal]]:
    """Promote the pending results of `--no-commit` runs: store their outputs in
    the cache and record them in the lockfile.  A stage whose outputs (or whose
    declared outs) changed since it ran is refused.  Returns the committed stage
    names and the refusals."""
    project, graph, stages = _chosen(engine, options)
    outputs = OutputCache(project.root, engine.warn)
    committed: list[str] = []
    refused: list[Refusal] = []
    with engine.state(project, options) as store, contextlib.closing(outputs):
        for stage in stages:
            record = store.pending(stage)
            if record is None:
                continue
            if [o.path for o in record.outs] != [o.path for o in stage.outs]:
                why = "its outs changed since it ran (the Pivotfile was edited)"
                refused.append(Refusal(graph.label(stage.id), why))
                continue
            now = [file_record(project.root, o.path, store.statcache(stage)) for o in record.outs]
            if [(o.path, o.kind, o.hash) for o in now] != [(o.path, o.kind, o.hash) for o in record.outs]:
                refused.append(Refusal(graph.label(stage.id), "its outputs changed since it ran"))
                continue
            outputs.keep(stage, record, store.statcache(stage))
            replaced = outputs.displaced(stage, store.committed(stage), record)
            if replaced is not None:
                outputs.remember(stage, replaced)
            store.promote(stage)
            committed.append(graph.label(stage.id))
    return committed, refused
