"""What a build leaves behind: each stage's record (journal, then lockfile),
its outputs in the cache (stored in the background, healed when missing),
the run cache (restoring outputs instead of running), rollback of a failed
stage's outputs, the build history, and the seal of what is up to date.

The build loop (run.py) calls it in its own thread as stages are decided and
finish; `DryRecorder` is its stand-in for a plan, which writes nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence, Set
from itertools import compress, repeat
from operator import attrgetter, is_not
from pathlib import Path

from pivotbuild.build.decider import UNCACHEABLE
from pivotbuild.build.executors.base import Inbox, Job
from pivotbuild.build.options import BuildOptions
from pivotbuild.cache.outputs import Captured, OutputCache
from pivotbuild.cache.storer import LOOP_MAX, Storer
from pivotbuild.events import BuildFinished, Event, Message, Status
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Stage, StageId
from pivotbuild.paths import STATE_DIR, joined
from pivotbuild.project import Project
from pivotbuild.state import history, seal, snapshot
from pivotbuild.state.kinds import DIR, FILE
from pivotbuild.state.records import FileRecord, StageRecord
from pivotbuild.state.seal import Seal
from pivotbuild.state.snapshot import PY, Snapshot
from pivotbuild.state.stamps import Stamp, racy_wait_ns
from pivotbuild.state.store import StateStore
from pivotbuild.structs import struct


@struct(frozen=True, slots=True)
class Outcome:
    """What one build did, stage by stage (see BuildRun.execute)."""

    code: int
    interrupted: bool
    status: Mapping[StageId, Status]
    reasons: Mapping[StageId, str]  # why each decided stage ran or was skipped
    durations: Mapping[StageId, float]  # of the stages that ran
    sealed: frozenset[StageId]  # up to date by the seal alone, never hashed


_incremental, _cache = attrgetter("incremental"), attrgetter("cache")  # (in C: a stage's outputs, per stage)


def store_hints(
    seen: Sequence[tuple[str, os.stat_result, str]], now_ns: int, proven: Set[str] = frozenset()
) -> tuple[bool, float]:
    """What the storer needs to know of the files a capture read (each with
    the stat it hashed it by; every file to store or read again is among
    them): whether all are at most LOOP_MAX bytes (the loop copies them),
    and the seconds from `now_ns` until all but the `proven` ones (whose
    stamps need no wait) are past their racy window (0: already, or too long
    to wait)."""
    small, wait = True, 0  # (one loop, no generator: a stage's one or two files)
    for path, st, _ in seen:
        if st.st_size > LOOP_MAX:
            small = False
        if path not in proven:
            wait = max(wait, racy_wait_ns(st, now_ns))
    return small, wait / 1e9


class Recorder:
    """Records one build over `store`; `outputs` is the build's output cache,
    whose background storer reports through `inbox`."""

    def __init__(
        self,
        project: Project,
        store: StateStore,
        outputs: OutputCache,
        inbox: Inbox,
        *,
        emit: Callable[[Event], None],
        options: BuildOptions,
        remote_only: frozenset[StageId] = frozenset(),
    ) -> None:
        """`remote_only`: the stages whose outputs stay where the executor
        made them (--no-checkout: build/elsewhere.py), which `elsewhere` then
        holds the records of, by path, for the stages reading them."""
        self.root = project.root
        self.store = store
        self.outputs = outputs
        self.emit = emit
        self.options = options
        self.caching = not options.no_cache and not options.no_commit
        # Proven stat-cache entries, and files found changed since they were
        # hashed, applied once the copies are done (`finish`): passing each to
        # this thread as it came woke the build loop per output.
        self._confirmed: list[tuple[Stage, str, os.stat_result, str]] = []
        self._changed: list[tuple[Stage, str]] = []
        self.storer = Storer(
            outputs,
            inbox.warn,
            lambda *proof: self._confirmed.append(proof),
            inbox.poller,
            changed=lambda *found: self._changed.append(found),
        )
        self.history_damaged = False  # mended when this build appends
        self.remote_only = remote_only
        self.elsewhere: dict[str, FileRecord] = {}
        self.started_at = ""

    def begin(self) -> None:
        """The build starts now (as its history entry says)."""
        self.started_at = history.now_stamp()

    def expected(
        self, graph: BuildGraph, closure: list[StageId], kept: history.Recent | None = None
    ) -> dict[StageId, float]:
        """Each stage's duration in recent builds, where known (from `kept`,
        a long-lived engine's, if given)."""
        labels = {graph.label(sid): sid for sid in closure}
        if kept is not None:
            recent = kept.load()
            past, skipped = history.durations_in(recent, labels), recent.skipped
        else:
            past, skipped = history.durations(self.root / STATE_DIR, labels)
        if skipped:
            self.emit(Message(history.damage_warning(skipped), "warning"))
        self.history_damaged = skipped > 0
        return {sid: past[label] for label, sid in labels.items() if label in past}

    def restore(self, stage: Stage, snap: Snapshot) -> bool:
        """Restore the stage's outputs from the run cache instead of running it, if it can."""
        outs = self.outputs.restore(stage, snap, self.store.record(stage))
        if outs is None:
            return False
        now = snapshot.outs_of(stage, self.root, self.store.statcache(stage))
        if [(o.path, o.hash) for o in now] != [(o.path, o.hash) for o in outs]:
            return False  # a checkout that does not hash as recorded: run the stage instead
        record = StageRecord(stage.name, snap.fingerprint, snap.command, snap.deps, outs, snap.params, snap.facets)
        replaced = self._replaced(stage, record)
        self.store.commit(stage, record, pending=self.options.no_commit)
        if replaced is not None:
            self.storer.put(stage, replaced, (), stage.id.label())
        return True

    def heal(self, stage: Stage, label: str) -> None:
        """An up-to-date stage whose outputs the cache lacks (a build killed or
        interrupted just after it finished, before they were copied) has them
        stored now, and its run-cache entry written: the cache fills in, with
        no rerun.  (Rare, so done here, in the loop's thread.)"""
        record = self.store.record(stage)
        if record is None or not self.caching:
            return
        cached = [(out, rec) for out, rec in zip(stage.outs, record.outs, strict=False) if out.cache]
        if all(rec.kind not in (FILE, DIR) or self.outputs.cache.has(rec.hash) for _, rec in cached):
            return
        try:
            self.outputs.keep(stage, record, self.store.statcache(stage))
        except OSError as exc:
            self.emit(Message(f"could not store the outputs of {label} in the cache ({exc.strerror})", "warning"))

    def job(self, stage: Stage, snap: Snapshot | None, label: str, reason: str) -> Job:
        """The job that runs `stage`, which starts now: its incremental outputs are put back first."""
        if any(map(_incremental, stage.outs)):  # (most stages have none: no record to look up)
            self.outputs.restore_incremental(stage, self.store.record(stage))
        checkout = stage.id not in self.remote_only
        recorded = None
        if not checkout and snap is not None and reason not in UNCACHEABLE:
            recorded = self.outputs.recorded(stage, snap, self.store.record(stage))
        entries = self.store.statcache(stage).entries
        return Job(stage, snap, label, reason, entries, checkout=checkout, recorded=recorded)

    def ran(self, job: Job, captured: Captured | None) -> str:
        """Record a stage that succeeded; or, if a declared output is missing,
        record nothing and return why it failed."""
        stage = job.stage
        assert captured is not None and job.snap is not None
        if why := fails(captured):
            return why
        cache = self.store.statcache(stage)
        proven, read_ns = captured.proven, captured.read_ns
        for path, st, digest in captured.seen:
            cache.note(path, st, digest, read_ns, proven=path in proven)
        snap = job.snap
        record = StageRecord(
            stage.name, snap.fingerprint, snap.command, snap.deps, captured.outs, snap.params, snap.facets
        )
        if not job.checkout:  # (as a stage reading them would have hashed them: snapshot.file_record)
            self.elsewhere.update((out.path, FileRecord(out.path, out.kind, out.hash)) for out in captured.outs)
        replaced = self._replaced(stage, record)
        self.store.commit(stage, record, pending=self.options.no_commit)
        if captured.seen or captured.deferred or captured.confirm or captured.stored or replaced is not None:
            # The copies, the reads that prove stat-cache entries, and the run-cache
            # entry, all off this thread.
            small, settled_in = store_hints(captured.seen, time.time_ns(), captured.proven)
            self.storer.put(
                stage,
                replaced,
                captured.deferred,
                job.label,
                captured.confirm,
                small=small,
                settled_in=settled_in,
                linked=captured.linked,
                holds=_cached(stage, self.root, captured.seen),
                failed=captured.uncached,
                contents=captured.contents,
            )
        return ""

    def _replaced(self, stage: Stage, record: StageRecord) -> StageRecord | None:
        """The lockfile record that `record` replaces, if the run cache should
        keep it (see OutputCache.displaced).  A --no-commit result replaces
        nothing yet: `pivotbuild commit` does, and keeps it then."""
        if self.options.no_commit:
            return None
        return self.outputs.displaced(stage, self.store.committed(stage), record)

    def roll_back(self, stage: Stage, label: str, quiet: bool = False) -> None:
        """A failed or interrupted stage's outputs go back to what the lockfile records."""
        try:
            restored, removed = self.outputs.roll_back(stage, self.store.record(stage))
        except OSError as exc:
            self.emit(Message(f"could not roll back the outputs of {label}: {exc}", "warning"))
            return
        if quiet or not (restored or removed):
            return
        parts = []
        if restored:
            parts.append(f"restored the recorded version of {', '.join(restored)}")
        if removed:
            parts.append(f"removed {', '.join(removed)} (no recorded version)")
        self.emit(Message(f"{label} did not succeed, so its outputs were rolled back: {'; '.join(parts)}"))

    def finish(self) -> bool:
        """Wait for the outputs still being copied into the cache.  False if
        interrupted meanwhile: the copies under way are abandoned (the next
        build stores what the cache lacks)."""
        try:
            self.storer.finish()
        except KeyboardInterrupt:
            return False
        for stage, path, st, digest in self._confirmed:
            self.store.statcache(stage).confirm(path, st, digest)
        self._confirmed.clear()
        for stage, path in self._changed:  # (its entry holds the hash from before: the next build reads it)
            self.store.statcache(stage).forget(path)
        self._changed.clear()
        return True

    def remember(self, outcome: Outcome, graph: BuildGraph, finished: BuildFinished) -> None:
        """The build's entry in the history (in watch mode, only if something
        happened in it: see watch/reporting.py)."""
        if self.options.watch and not (
            finished.ran or finished.restored or finished.failed or finished.cancelled or finished.interrupted
        ):
            return
        # The stages that did not skip, picked in C (an incremental build of
        # 1,000 stages skips 945 of them, which a loop here would walk past).
        status = outcome.status
        done = compress(status.items(), map(is_not, status.values(), repeat(Status.SKIPPED)))
        stages = {
            graph.label(sid): {"status": st.value, "duration_s": round(outcome.durations.get(sid, 0.0), 3)}
            for sid, st in done
        }
        result = "interrupted" if outcome.interrupted else "failed" if finished.failed else "ok"
        try:
            history.record_build(
                self.root / STATE_DIR,
                started=self.started_at,
                duration_s=finished.duration_s,
                targets=list(self.options.targets),
                result=result,
                counts=(finished.ran, finished.skipped, finished.failed),
                stages=stages,
                repair=self.history_damaged,
            )
        except OSError as exc:
            self.emit(Message(f"could not write the build history: {exc.strerror}", "warning"))

    def seal(self, project: Project, graph: BuildGraph, outcome: Outcome, old: Seal | None) -> None:
        """Seal every stage that is up to date after this build (see seal.py),
        once the lockfiles are written: `new_seal`, written.  A seal that
        cannot be written only costs the next no-op its speed."""
        new = self.new_seal(project, graph, outcome, old)
        if new is not None and project.main_dir is not None:
            write_seal(project.main_dir, new)

    def new_seal(self, project: Project, graph: BuildGraph, outcome: Outcome, old: Seal | None) -> Seal | None:
        """The seal of every stage up to date after this build, once the
        lockfiles are written; None if there is none to write (the seal on
        disk is removed where results are pending).  Stages this build did not
        decide keep their old seal, valid because their records did not change."""
        main = project.main
        if main is None or not project.plan_id:
            return None
        main_dir = self.root / main.dir
        store = self.store
        if any(st.pending for st in store.pipelines.values()):
            seal.remove(main_dir)
            return None
        # Each lockfile as this build read or wrote it (Records.digest), not as
        # it is now: one removed or replaced since (by a person: the project
        # lock keeps only other pivotbuilds out) is then not what the seal
        # vouches for, and the next build decides the ordinary way.
        locks = [(str(st.lock_path), st.records.digest) for st in store.pipelines.values()]
        absent = [str(p) for st in store.pipelines.values() for p in (st.journal_path, st.pending_path)]
        # Every stage the old seal holds stays sealed as it was unless this
        # build decided it afresh (a stage it did not decide, or found sealed,
        # kept its records and stamps).
        new = (
            old.renewed(project.plan_id, locks, absent)
            if old is not None
            else seal.Seal(project.plan_id, locks, absent)
        )
        seen: dict[tuple[str, str], tuple[str, Stamp | None] | None] = {}
        unstored = self.storer.unstored  # the next build must decide these, and store what the cache lacks
        # The stages this build decided, and every `always` one; in the plan's
        # order.  (A stage's Stage is made only for those.)
        sealed_now = outcome.sealed
        decided = {sid for sid in outcome.status if sid not in sealed_now}
        decided.update(graph.always_ids)
        index_of = graph.index_of
        for i, sid in sorted((index_of(sid), sid) for sid in decided):
            status = outcome.status.get(sid)
            new.drop(i)
            stage = graph.stages[sid]
            record = store.record(stage)
            if stage.always or record is None or status not in (Status.RAN, Status.SKIPPED, Status.RESTORED):
                continue
            if sid in unstored or self._left_elsewhere(record):
                continue
            now = time.time_ns()  # (before the stage's listings; taken again for each: the seal may wait for one)
            try:
                files = seal.stage_files(
                    (*record.deps, *record.outs), self.root, store.statcache(stage).entries, now, seen
                )
                if stage.py is not None:
                    files.extend(self._source_stamps(stage, record, now))
            except seal.Unsealable:
                continue
            new.add(i, files)
        return new

    def _left_elsewhere(self, record: StageRecord) -> bool:
        """Does the stage's record name an output left on the remote (not here to stamp)?"""
        return bool(self.elsewhere) and any(rec.path in self.elsewhere for rec in (*record.deps, *record.outs))

    def _source_stamps(self, stage: Stage, record: StageRecord, now_ns: int) -> list[tuple[str, Stamp | None]]:
        """The stamps that prove a `py:` stage's code is what its record says:
        every project file and directory its fingerprint read (pysource.py),
        if the fingerprint is still the recorded one.  Raises Unsealable."""
        from pivotbuild.pysource import SourceError, fingerprint

        assert stage.py is not None
        try:
            found = fingerprint(stage.py, self.root / stage.id.pipeline, self.root)
        except SourceError:
            raise seal.Unsealable(stage.py) from None
        recorded = {(k, v) for k, v in record.facets if k == PY or k.startswith(PY + " ")}
        if recorded != {(f"{PY} {unit}", digest) for unit, digest in found.parts}:
            raise seal.Unsealable(stage.py)  # (changed since it was decided: the next build decides it again)
        return [(path, seal.settled_stamp(path, now_ns)) for path in (*found.files, *found.dirs)]


def _cached(
    stage: Stage, root: str | os.PathLike[str], seen: tuple[tuple[str, os.stat_result, str], ...]
) -> tuple[tuple[str, os.stat_result, str], ...]:
    """Of the files `seen`, those of the stage's cached outputs: the objects it counts on."""
    if all(map(_cache, stage.outs)):
        return seen
    bases = tuple(joined(root, out.path) for out in stage.outs if not out.cache)
    inside = tuple(base + os.sep for base in bases)
    return tuple(s for s in seen if s[0] not in bases and not s[0].startswith(inside))


def fails(captured: Captured | None) -> str:
    """Why a stage whose command succeeded failed all the same (`Recorder.ran`'s
    rule: a declared output missing), or "".  The loop asks it before it
    hands a stage's place on (BuildRun._start_next)."""
    if captured is not None and captured.missing:
        return f"declared output {captured.missing[0]} was not created"
    return ""


def write_seal(main_dir: Path, new: Seal) -> None:
    """`new` written as the seal of the pipeline in `main_dir`; the seal there
    removed if it cannot be (a stale one must not stay)."""
    try:
        new.write(main_dir)
    except OSError:
        seal.remove(main_dir)


class DryRecorder:
    """The recorder of a plan: it reads no history and writes nothing."""

    def begin(self) -> None:
        pass

    def expected(
        self, graph: BuildGraph, closure: list[StageId], kept: history.Recent | None = None
    ) -> dict[StageId, float]:
        return {}

    def restore(self, stage: Stage, snap: Snapshot) -> bool:
        return False

    def heal(self, stage: Stage, label: str) -> None:
        pass

    def job(self, stage: Stage, snap: Snapshot | None, label: str, reason: str) -> Job:
        return Job(stage, snap, label, reason, {})

    def ran(self, job: Job, captured: Captured | None) -> str:
        return ""

    def roll_back(self, stage: Stage, label: str, quiet: bool = False) -> None:
        pass

    def finish(self) -> bool:
        return True

    def remember(self, outcome: Outcome, graph: BuildGraph, finished: BuildFinished) -> None:
        pass
