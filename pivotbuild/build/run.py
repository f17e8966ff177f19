"""The scheduling loop of one build: decide stages as they become ready, start
what admission allows, run each in a worker thread, record results the moment
they arrive, and block or stop on failures.

Workers never touch shared state: they put log lines and their result on one
queue, and the loop (in the caller's thread) does everything else, so
reporters see events from one thread only.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pivotbuild.build.admission import Admission, TokenPool, critical_path
from pivotbuild.build.decider import ALWAYS, FORCED, UP_TO_DATE
from pivotbuild.build.executors import runner
from pivotbuild.build.executors.lifeline import Lifeline
from pivotbuild.build.executors.stagework import run_stage
from pivotbuild.build.options import BuildOptions
from pivotbuild.cache.outputs import Captured, OutputCache
from pivotbuild.cache.storer import Storer
from pivotbuild.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from pivotbuild.events import (
    BuildFinished,
    BuildStarted,
    Event,
    Message,
    StageFinished,
    StageStarted,
    StageState,
    State,
    Status,
)
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Stage, StageId
from pivotbuild.paths import STATE_DIR
from pivotbuild.project import Project
from pivotbuild.state import history, snapshot
from pivotbuild.state.kinds import DIR, FILE
from pivotbuild.state.records import StageRecord
from pivotbuild.state.seal import Seal
from pivotbuild.state.snapshot import Snapshot
from pivotbuild.state.store import StateStore

if TYPE_CHECKING:
    from pivotbuild.build.engine import Engine


class Interrupted(Exception):
    """Raised into the engine (from a signal handler) to stop a build."""


@dataclass(frozen=True, slots=True)
class _Done:
    sid: StageId
    result: runner.RunResult
    captured: Captured | None = None  # the outputs, hashed and stored, after a success


@dataclass(frozen=True, slots=True)
class _Confirmed:
    """A storer thread read `path` again and proved its stat-cache entry (see Storer)."""

    stage: Stage
    path: str
    st: os.stat_result
    digest: str


class BuildRun:
    """The scheduling loop of one build (see Engine.build)."""

    def __init__(
        self,
        engine: Engine,
        *,
        project: Project,
        graph: BuildGraph,
        closure: list[StageId],
        store: StateStore,
        options: BuildOptions,
        cancel: threading.Event,
        order_after: dict[StageId, list[StageId]] | None = None,
        block_on_failure: bool = True,
        seal: Seal | None = None,
    ) -> None:
        """`closure` is every stage of the build, which `-B` forces whole;
        `order_after` replaces the graph's edges (for `run`, the given order);
        with `block_on_failure` false, a failure does not block what follows it."""
        self.engine = engine
        self.root = project.root
        self.graph = graph
        self.closure = closure
        self.store = store
        self.options = options
        self.cancel = cancel
        self.events: queue.SimpleQueue[Event | _Done | _Confirmed] = queue.SimpleQueue()
        jobs = options.jobs or os.cpu_count() or 1
        self.admission = Admission(TokenPool(jobs), options.load_average)
        self.outputs = OutputCache(self.root, self._warn_from_any_thread, building=True)
        self.storer = Storer(
            self.outputs,
            lambda text: self.events.put(Message(text, "warning")),
            lambda stage, path, st, digest: self.events.put(_Confirmed(stage, path, st, digest)),
        )
        in_build = set(closure)
        self.after: dict[StageId, list[StageId]] = (
            dict(order_after)
            if order_after is not None
            else {s: [u for u in graph.upstream_stages(s) if u in in_build] for s in closure}
        )
        self.next: dict[StageId, list[StageId]] = {s: [] for s in closure}
        for s, ups in self.after.items():
            for u in ups:
                self.next[u].append(s)
        self.block_on_failure = block_on_failure
        self.seal = seal
        self.skipped = 0
        self.work: queue.SimpleQueue[tuple[Stage, Snapshot, str] | None] = queue.SimpleQueue()
        self.environ = dict(os.environ)  # copied once, not per stage
        self.lifeline = Lifeline()  # kills the running stages if pivotbuild is killed
        self.workers: list[None] = []  # one entry per worker thread started
        self.idle_workers = 0  # workers that finished a stage and wait for the next
        self.sealed_skips: set[StageId] = set()  # up to date by the seal, never hashed
        # Every result a worker sends is also kept here until handled, so one
        # taken off the queue when an interrupt struck is not lost for good.
        self.unhandled: dict[StageId, _Done] = {}
        self.waiting = {s: len(self.after[s]) for s in closure}
        self.ready: list[StageId] = [s for s in closure if self.waiting[s] == 0]
        self.to_run: dict[StageId, tuple[Snapshot, str]] = {}
        self.running: dict[StageId, tuple[Snapshot, str, float]] = {}
        self.status: dict[StageId, Status] = {}
        self.durations: dict[StageId, float] = {}
        self.failures: list[StageFinished] = []
        self.started = 0
        self.stopping = False
        recent = history.load(self.root / STATE_DIR, history.RECENT)
        if recent.skipped:
            engine.emit(Message(history.damage_warning(recent.skipped), "warning"))
        self.history_damaged = recent.skipped > 0  # mended when this build appends
        past = history.durations_in(recent)
        self.expected = {sid: past[graph.label(sid)] for sid in closure if graph.label(sid) in past}
        self.priority = critical_path(closure, self.next.__getitem__, self.expected)

    # -- the loop -----------------------------------------------------------------

    def execute(self) -> int:
        t0 = time.monotonic()
        stamp = history.now_stamp()
        self.engine.emit(BuildStarted(len(self.closure), self.admission.jobserver.capacity))
        for sid in self.closure:
            self._state(sid, State.READY if self.waiting[sid] == 0 else State.PENDING)
        interrupted = False
        try:
            self._loop()
        except (KeyboardInterrupt, Interrupted):
            interrupted = True
            self._drain_after_interrupt()
        if not self._finish_storing():
            interrupted = True
        self._cancel_unstarted()
        for _ in self.workers:
            self.work.put(None)  # every worker is idle now: let it finish
        self.lifeline.close()  # (not on an exception above: stages may still run, and die with us)
        counts = {s: sum(1 for v in self.status.values() if v is s) for s in Status}
        finished = BuildFinished(
            ran=counts[Status.RAN],
            skipped=counts[Status.SKIPPED],
            restored=counts[Status.RESTORED],
            failed=counts[Status.FAILED],
            blocked=counts[Status.BLOCKED],
            cancelled=counts[Status.CANCELLED],
            duration_s=time.monotonic() - t0,
            interrupted=interrupted,
            files_read=self.store.files_read(),
        )
        for failure in self.failures:
            self.engine.emit(failure)  # again at the end, where it is seen
        self.engine.emit(finished)
        result = "interrupted" if interrupted else "failed" if finished.failed else "ok"
        self._remember(stamp, finished, result)
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if finished.failed else EXIT_OK

    def _loop(self) -> None:
        while True:
            self._decide_ready()
            if not self.stopping:
                self._start_what_fits()
            if not self.running:
                if self.to_run and not self.stopping:  # pragma: no cover - admission never refuses an idle build
                    raise AssertionError("no stage can start although nothing is running")
                return
            timeout = 0.2 if self.admission.waits_on_resources else 1.0
            try:
                item = self.events.get(timeout=timeout)
            except queue.Empty:
                if self.cancel.is_set():
                    raise Interrupted from None
                continue
            self._handle(item)
            if self.cancel.is_set():
                raise Interrupted

    def _finish_storing(self) -> bool:
        """Wait for the outputs still being copied into the cache, and report
        what the copying had to say.  False if interrupted meanwhile: the copies
        still under way are abandoned (the next build stores what the cache
        lacks), and the build ends as interrupted."""
        finished = True
        try:
            self.storer.finish()
        except KeyboardInterrupt:
            finished = False
            self.cancel.set()
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return finished
            if not isinstance(item, _Done):
                self._handle(item)

    def _handle(self, item: Event | _Done | _Confirmed) -> None:
        if isinstance(item, _Done):
            if self.unhandled.pop(item.sid, None) is None:
                return  # handled already (see _drain_after_interrupt)
            self.idle_workers += 1  # the worker that sent it waits for the next stage
            self._complete(item.sid, item.result, item.captured)
        elif isinstance(item, _Confirmed):
            self.store.statcache(item.stage).confirm(item.path, item.st, item.digest)
        else:
            self.engine.emit(item)

    def _decide_ready(self) -> None:
        while self.ready:
            sid = self.ready.pop(0)
            stage = self.graph.stages[sid]
            forced = self.options.always_make  # -B: every stage of the closure, as make does
            self._state(sid, State.PREPARING)
            if not forced and self._sealed(sid):
                self.sealed_skips.add(sid)
                self._finish(sid, StageFinished(self.graph.label(sid), Status.SKIPPED, UP_TO_DATE, 0.0))
                continue
            decision, snap = self.engine.decide(stage, self.store, forced)
            if decision.run and decision.reason not in (FORCED, ALWAYS) and self._restore(stage, snap, decision.reason):
                continue
            if decision.run and (unfit := self.admission.unfit(stage)):
                self._fail(sid, StageFinished(self.graph.label(sid), Status.FAILED, decision.reason, 0.0, unfit))
            elif decision.run:
                self.to_run[sid] = (snap, decision.reason)
                self._state(sid, State.READY, decision.reason)
            else:
                self._heal(stage)
                self._finish(sid, StageFinished(self.graph.label(sid), Status.SKIPPED, decision.reason, 0.0))

    def _sealed(self, sid: StageId) -> bool:
        """Up to date by the seal alone, its stamps checked now.  Not asked once an
        upstream stage ran or was restored in this build: that rewrote some of
        them, so the answer is known (and the stats spared)."""
        if self.seal is None:
            return False
        if any(self.status.get(u) in (Status.RAN, Status.RESTORED) for u in self.after[sid]):
            return False
        return self.seal.holds([self.graph.index_of(sid)])

    def _heal(self, stage: Stage) -> None:
        """An up-to-date stage whose outputs the cache lacks (a build killed or
        interrupted just after it finished, before they were copied) has them
        stored now, and its run-cache entry written: the cache fills in, with
        no rerun.  (Rare, so done here, in this thread.)"""
        record = self.store.record(stage)
        if record is None or self.options.no_cache or self.options.no_commit:
            return
        cached = [(out, rec) for out, rec in zip(stage.outs, record.outs, strict=False) if out.cache]
        if all(rec.kind not in (FILE, DIR) or self.outputs.cache.has(rec.hash) for _, rec in cached):
            return
        try:
            self.outputs.keep(stage, record, self.store.statcache(stage))
        except OSError as exc:
            text = f"could not store the outputs of {self.graph.label(stage.id)} in the cache ({exc.strerror})"
            self.engine.emit(Message(text, "warning"))

    def _warn_from_any_thread(self, text: str) -> None:
        """A cache warning: emitted here if on the main thread, else queued for
        it (reporters see events from one thread only)."""
        if threading.current_thread() is threading.main_thread():
            self.engine.emit(Message(text, "warning"))
        else:
            self.events.put(Message(text, "warning"))

    def _restore(self, stage: Stage, snap: Snapshot, reason: str) -> bool:
        """Restore the stage's outputs from the cache instead of running it, if it can."""
        outs = self.outputs.restore(stage, snap, self.store.record(stage))
        if outs is None:
            return False
        now = snapshot.outs_of(stage, self.root, self.store.statcache(stage))
        if [(o.path, o.hash) for o in now] != [(o.path, o.hash) for o in outs]:
            return False  # a checkout that does not hash as recorded: run the stage instead
        self.store.commit(
            stage,
            StageRecord(stage.name, snap.fingerprint, snap.command, snap.deps, outs, snap.params, snap.facets),
            pending=self.options.no_commit,
        )
        self._finish(stage.id, StageFinished(self.graph.label(stage.id), Status.RESTORED, reason, 0.0))
        return True

    def _start_what_fits(self) -> None:
        if not self.to_run or self.admission.saturated:
            return
        for sid in sorted(self.to_run, key=self.priority.__getitem__, reverse=True):  # stable: ties keep their order
            if self.admission.saturated:
                return
            stage = self.graph.stages[sid]
            if not self.admission.try_start(stage):
                continue
            snap, reason = self.to_run.pop(sid)
            self.outputs.restore_incremental(stage, self.store.record(stage))
            self.started += 1
            total = len(self.closure) - self.skipped
            label = self.graph.label(sid)
            self._state(sid, State.RUNNING, reason)
            self.engine.emit(StageStarted(label, self.started, total, reason, expected_s=self.expected.get(sid)))
            self.running[sid] = (snap, reason, time.monotonic())
            self._dispatch(stage, snap, label)

    def _dispatch(self, stage: Stage, snap: Snapshot, label: str) -> None:
        """Hand a stage to an idle worker thread, starting one if all are busy.
        (Workers are reused: starting a thread per stage costs the scheduler
        more than a short stage takes.)"""
        self.work.put((stage, snap, label))
        if self.idle_workers > 0:
            self.idle_workers -= 1
            return
        threading.Thread(target=self._worker, name=f"worker {len(self.workers)}", daemon=True).start()
        self.workers.append(None)

    def _worker(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            self._work(*item)

    # -- one stage, in its worker thread ------------------------------------------------

    def _work(self, stage: Stage, snap: Snapshot, label: str) -> None:
        result, captured = run_stage(
            stage,
            snap,
            label,
            root=self.root,
            environ=self.environ,
            outputs=self.outputs,
            known=self.store.statcache(stage).entries,
            store=not self.options.no_cache and not self.options.no_commit,
            cancel=self.cancel,
            put=self.events.put,
            started=lambda: self.started,
            lifeline=self.lifeline,
        )
        done = _Done(stage.id, result, captured)
        self.unhandled[stage.id] = done
        self.events.put(done)

    # -- completions ------------------------------------------------------------------

    def _complete(self, sid: StageId, result: runner.RunResult, captured: Captured | None) -> None:
        stage = self.graph.stages[sid]
        snap, reason, started = self.running.pop(sid)
        self.admission.finished(stage)
        duration = time.monotonic() - started
        self.durations[sid] = duration
        label = self.graph.label(sid)
        if result.cancelled:
            self._roll_back(stage, label, quiet=True)
            self._finish(sid, StageFinished(label, Status.CANCELLED, "interrupted", duration))
            return
        if not result.ok:
            detail = result.describe(stage.timeout)
            self._roll_back(stage, label)
            self._fail(sid, StageFinished(label, Status.FAILED, reason, duration, detail, result.tail))
            return
        assert captured is not None
        if captured.missing:
            detail = f"declared output {captured.missing[0]} was not created"
            self._roll_back(stage, label)
            self._fail(sid, StageFinished(label, Status.FAILED, reason, duration, detail, result.tail))
            return
        cache = self.store.statcache(stage)
        for path, st, digest in captured.seen:
            cache.note(path, st, digest)
        outs = captured.outs
        record = StageRecord(stage.name, snap.fingerprint, snap.command, snap.deps, outs, snap.params, snap.facets)
        self.store.commit(stage, record, pending=self.options.no_commit)
        if captured.deferred or captured.confirm or captured.stored:
            # The copies, the reads that prove stat-cache entries, and the run-cache
            # entry, all off this thread.
            self.storer.put(stage, record if captured.stored else None, captured.deferred, label, captured.confirm)
        self._finish(sid, StageFinished(label, Status.RAN, reason, duration))

    def _roll_back(self, stage: Stage, label: str, quiet: bool = False) -> None:
        """A failed or interrupted stage's outputs go back to what the lockfile records."""
        try:
            restored, removed = self.outputs.roll_back(stage, self.store.record(stage))
        except OSError as exc:
            self.engine.emit(Message(f"could not roll back the outputs of {label}: {exc}", "warning"))
            return
        if quiet or not (restored or removed):
            return
        parts = []
        if restored:
            parts.append(f"restored the recorded version of {', '.join(restored)}")
        if removed:
            parts.append(f"removed {', '.join(removed)} (no recorded version)")
        self.engine.emit(Message(f"{label} did not succeed, so its outputs were rolled back: {'; '.join(parts)}"))

    def _fail(self, sid: StageId, event: StageFinished) -> None:
        self.failures.append(event)
        self._finish(sid, event)
        if not self.options.keep_going:
            self.stopping = True
        if not self.block_on_failure:
            self._release(sid)
            return
        for down in self._descendants(sid):
            if down not in self.status:
                self.to_run.pop(down, None)
                reason = f"upstream {event.stage} failed"
                self._finish(down, StageFinished(self.graph.label(down), Status.BLOCKED, reason, 0.0))

    def _descendants(self, sid: StageId) -> list[StageId]:
        """Every stage of this build that waits on `sid`, directly or not, in build order."""
        seen: set[StageId] = set()
        stack = list(self.next[sid])
        while stack:
            d = stack.pop()
            if d not in seen:
                seen.add(d)
                stack.extend(self.next[d])
        return [s for s in self.closure if s in seen]

    def _state(self, sid: StageId, state: State, reason: str = "") -> None:
        self.engine.emit(StageState(self.graph.label(sid), state, reason))

    def _finish(self, sid: StageId, event: StageFinished) -> None:
        self.status[sid] = event.status
        if event.status is Status.SKIPPED:
            self.skipped += 1
        blocked = event.status is Status.BLOCKED
        self._state(sid, State.BLOCKED if blocked else State.DONE, event.reason if blocked else event.status.value)
        self.engine.emit(event)
        if event.status in (Status.RAN, Status.SKIPPED, Status.RESTORED):
            self._release(sid)

    def _release(self, sid: StageId) -> None:
        """`sid` is out of the way: stages waiting only for it become ready."""
        for down in self.next[sid]:
            if down not in self.status:
                self.waiting[down] -= 1
                if self.waiting[down] == 0:
                    self.ready.append(down)

    def _drain_after_interrupt(self) -> None:
        """Stop everything: kill every running stage's tree and wait for the workers."""
        self.cancel.set()
        self.stopping = True
        while self.running:
            try:
                item = self.events.get(timeout=0.5)
            except queue.Empty:
                # A result taken off the queue just as the interrupt struck
                # would otherwise be waited for forever.
                for done in [d for sid, d in list(self.unhandled.items()) if sid in self.running]:
                    self._handle(done)
                continue
            except KeyboardInterrupt:
                continue  # a second Ctrl-C: we are already stopping
            self._handle(item)

    def _cancel_unstarted(self) -> None:
        for sid in self.closure:
            if sid not in self.status:
                self._finish(sid, StageFinished(self.graph.label(sid), Status.CANCELLED, "not started", 0.0))

    def _remember(self, stamp: str, finished: BuildFinished, result: str) -> None:
        stages = {
            self.graph.label(sid): {"status": status.value, "duration_s": round(self.durations.get(sid, 0.0), 3)}
            for sid, status in self.status.items()
            if status not in (Status.SKIPPED,)
        }
        try:
            history.record_build(
                self.root / STATE_DIR,
                started=stamp,
                duration_s=finished.duration_s,
                targets=list(self.options.targets),
                result=result,
                counts=(finished.ran, finished.skipped, finished.failed),
                stages=stages,
                repair=self.history_damaged,
            )
        except OSError as exc:
            self.engine.emit(Message(f"could not write the build history: {exc.strerror}", "warning"))
