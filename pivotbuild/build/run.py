"""The loop of one build, tying its parts together: the scheduler says which
stage is ready, the decider whether it must run, admission when it may
start, the executor runs it, and the recorder records it the moment its
result arrives; a failure blocks what follows it, or stops the build.

Executors report on one inbox from any thread; the loop, in the caller's
thread, does everything else, so reporters see events from one thread only.
A plan (-n, -q, status) is this same loop with the dry executor and the dry
recorder: nothing runs and nothing is written.
"""

from __future__ import annotations

import heapq
import math
import os
import stat
import threading
import time
from collections.abc import Callable

from pivotbuild.build.admission import Admission
from pivotbuild.build.decider import UNCACHEABLE, UP_TO_DATE, Decider, Verdict
from pivotbuild.build.executors.base import Changed, Done, Executor, Inbox, Item, Job, PoolForStage
from pivotbuild.build.executors.choice import ExecutorError
from pivotbuild.build.interrupts import Signals
from pivotbuild.build.recorder import DryRecorder, Outcome, Recorder, fails
from pivotbuild.build.scheduler import Scheduler
from pivotbuild.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from pivotbuild.events import BuildFinished, BuildStarted, Event, StageFinished, StageStarted, StageState, State, Status
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId


class Interrupted(Exception):
    """Raised into the engine (from a signal handler) to stop a build."""


class BuildRun:
    """One build of the stages of `scheduler`, reporting through `emit`.
    `cancel`, once set (by an interrupt, or another thread), stops it; with
    `keep_going`, a failure stops only what waits on it."""

    def __init__(
        self,
        emit: Callable[[Event], None],
        *,
        graph: BuildGraph,
        scheduler: Scheduler,
        decider: Decider,
        admission: Admission,
        executor: Executor,
        recorder: Recorder | DryRecorder,
        inbox: Inbox,
        cancel: threading.Event,
        keep_going: bool,
        expected: dict[StageId, float] | None = None,
        states: bool = False,
        settled: list[StageId] | None = None,
        settled_events: bool = True,
    ) -> None:
        """`expected`: past durations, shown as each stage starts.  `states`:
        emit each stage's StageState changes too (five per stage: built only
        for a reporter that wants them; see events.Reporter).  `settled`:
        stages of the build besides the scheduler's, known up to date by the
        seal before it began (build/settled.py): each is reported
        skipped (unless `settled_events` is false: the reporter shows no
        skipped stage, and the build's summary counts them), and nothing
        else is done for it."""
        self.emit = emit
        self.states = states
        self.graph = graph
        self.scheduler = scheduler
        self.decider = decider
        self.admission = admission
        self.executor = executor
        self.recorder = recorder
        self.inbox = inbox
        self.cancel = cancel
        self.keep_going = keep_going
        self.expected = expected or {}
        self.closure = scheduler.closure
        self.settled = settled or []
        self.settled_events = settled_events or states
        self.to_run: dict[StageId, Verdict] = {}  # decided to run, waiting to be admitted
        # The same stages by priority (the longest remaining path first, then
        # the order they were decided in): a heap, not a sort of every waiting
        # stage at every start (1,000 ready stages made that quadratic).
        self._queue: list[tuple[float, int, StageId]] = []
        self._queued = 0
        self.running: dict[StageId, Job] = {}
        self.reasons: dict[StageId, str] = {}
        self.durations: dict[StageId, float] = {}
        self.sealed: set[StageId] = set()
        self.failures: list[StageFinished] = []
        self.skipped = 0
        self.started = 0
        self.stopping = False
        self.unusable: ExecutorError | None = None  # why the executor could start no stage, if it could not
        self.signals = Signals()
        self.pool: PoolForStage | None = getattr(admission.jobserver, "for_stage", None)  # (our stages borrow from it)
        self._settle_jobs: Callable[[], None] | None = getattr(admission.jobserver, "settle", None)
        self._watching_pool = False  # the job pool's descriptor is watched for a token coming back

    def execute(self) -> Outcome:
        t0 = time.monotonic()
        self.recorder.begin()
        self.emit(BuildStarted(len(self.closure) + len(self.settled), self.admission.jobserver.capacity))
        if self.states:
            waiting = self.scheduler.waiting
            for sid in self.closure:
                self._state(self.graph.label(sid), State.READY if waiting[sid] == 0 else State.PENDING)
        interrupted = False
        with self.signals.caught_in(self.inbox.poller):
            try:
                self._settle()
                self._loop()
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
                self._drain_after_interrupt()
                self._settle_tokens()
        if not self._finish_storing():
            interrupted = True
        for sid in self.scheduler.unfinished():
            self._finish(sid, StageFinished(self.graph.label(sid), Status.CANCELLED, "not started", 0.0))
        self.executor.close()
        self.inbox.poller.close()
        self._watching_pool = False
        if self.unusable is not None:
            raise self.unusable
        counts = self.scheduler.counts()
        finished = BuildFinished(
            ran=counts[Status.RAN],
            skipped=counts[Status.SKIPPED],
            restored=counts[Status.RESTORED],
            failed=counts[Status.FAILED],
            blocked=counts[Status.BLOCKED],
            cancelled=counts[Status.CANCELLED],
            duration_s=time.monotonic() - t0,
            interrupted=interrupted,
            files_read=self.decider.files_read(),
        )
        for failure in self.failures:
            self.emit(failure)  # again at the end, where it is seen
        self.emit(finished)
        code = EXIT_INTERRUPTED if interrupted else EXIT_FAILED if finished.failed else EXIT_OK
        outcome = Outcome(
            code, interrupted, self.scheduler.status, self.reasons, self.durations, frozenset(self.sealed)
        )
        self.recorder.remember(outcome, self.graph, finished)
        return outcome

    def _loop(self) -> None:
        take = self.inbox.next
        signals = self.signals
        # Tokens an ended stage left go straight to the next start only in our
        # own pool, or to a stage already decided (_start_next); make's go
        # back before deciding (which may hash large files), as make's other
        # jobs may be waiting for them.
        owned = getattr(self.admission.jobserver, "owned", False)
        restock = getattr(self.admission.jobserver, "restock", None) if self.pool is not None else None
        everyone = len(self.closure) + len(self.settled)
        while True:
            if not owned:
                self._settle_tokens()
            self._decide_ready()
            if not self.stopping:
                self._start_what_fits()
            if signals.caught:
                raise Interrupted
            if not self.running:
                if self.to_run and not self.stopping:  # pragma: no cover - admission never refuses an idle build
                    raise AssertionError("no stage can start although nothing is running")
                self._settle_tokens()  # (the last stage's tokens go back now, not after the storing and sealing)
                return
            if self.to_run and self.admission.external and not self._watching_pool:
                self._watch_pool()
            self._settle_tokens()  # (tokens no start took go back before the wait)
            if restock is not None and len(self.running) + len(self.scheduler.status) < everyone:
                restock()  # (a stage is still to start: its job pool descriptors opened while the others run)
            signals.deferring = True  # (the executor runs in here: see Signals)
            item = take(0.2 if self.admission.waits_on_resources else 1.0)
            signals.deferring = False
            if item is not None:
                self._handle(item)
            if self.cancel.is_set() or signals.caught:
                raise Interrupted

    def _settle_tokens(self) -> None:
        """Give back the job tokens ended stages left for starts that will not
        come.  (`settle` is optional: a job server written to the older
        interface has none.)"""
        settle = self._settle_jobs
        if settle is None:
            return
        was, self.signals.deferring = self.signals.deferring, True  # (make's tokens: none lost to an interrupt)
        try:
            settle()
        finally:
            self.signals.deferring = was

    def _settle(self) -> None:
        """Report the settled stages up to date (by the seal: they keep it)."""
        label = self.graph.label
        self.reasons.update(dict.fromkeys(self.settled, UP_TO_DATE))
        self.sealed.update(self.settled)
        self.skipped += len(self.settled)
        self.scheduler.settled(self.settled)  # (counted before any is reported: an interrupt may come)
        if self.settled_events:
            for sid in self.settled:
                self._state(label(sid), State.DONE, Status.SKIPPED.value)
                self.emit(StageFinished(label(sid), Status.SKIPPED, UP_TO_DATE, 0.0))

    def _watch_pool(self) -> None:
        """While a stage waits for a token a read found missing, wait for the
        pool (make's, or ours that the stages share) to become readable: a
        token given back by make's other jobs or a stage's children."""
        jobserver = self.admission.jobserver
        fd = getattr(jobserver, "fd", -1)
        if fd < 0 or not getattr(jobserver, "dry", False):
            return
        poller = self.inbox.poller

        def readable() -> None:
            poller.unwatch(fd)
            self._watching_pool = False
            jobserver.woken()  # type: ignore[attr-defined]
            poller.interrupt()  # (the loop tries again now, not at the end of its wait)

        poller.watch(fd, readable)
        self._watching_pool = True

    def _finish_storing(self) -> bool:
        """Wait for the outputs still being copied into the cache, and report
        what the copying had to say.  False if interrupted meanwhile."""
        finished = self.recorder.finish()
        if not finished:
            self.cancel.set()
        while (item := self.inbox.take_nowait()) is not None:
            if not isinstance(item, (Done, Changed)):
                self._handle(item)
        return finished

    def _handle(self, item: Item) -> None:
        if isinstance(item, Done):
            if self.inbox.handled(item):  # else handled already (see _drain_after_interrupt)
                self._complete(item)
        elif isinstance(item, Changed):
            self._changed(item)
        else:
            self.emit(item)

    def _changed(self, item: Changed) -> None:
        """Inputs changed under the build (watch mode): start nothing more; with
        `restart`, kill the running stages whose inputs now differ.  Files
        whose contents are what this build knew (a `touch`, a save with no
        change) change nothing."""
        if not any(self._differs(path) for path in item.paths):
            return
        self.stopping = True
        if item.restart:
            for job in list(self.running.values()):
                if inputs_changed(job, item.paths, item.root):
                    self.executor.cancel_job(job)

    def _decide_ready(self) -> None:
        scheduler = self.scheduler
        graph = self.graph
        while (sid := scheduler.pop_ready()) is not None:
            stage = graph.stages[sid]
            label = graph.label(sid)
            if self.states:
                self._state(label, State.PREPARING)
            v = self.decider.stage(sid, scheduler.upstream_wrote(sid))
            self.reasons[sid] = v.reason
            if not v.run:
                if v.sealed:
                    self.sealed.add(sid)
                else:
                    self.recorder.heal(stage, label)
                self._finish(sid, StageFinished(label, Status.SKIPPED, v.reason, 0.0))
            elif v.snap is not None and v.reason not in UNCACHEABLE and self.recorder.restore(stage, v.snap):
                if self.decider.trusted:  # (files were written: see Decider.distrust)
                    self.decider.distrust()
                self._finish(sid, StageFinished(label, Status.RESTORED, v.reason, 0.0))
            elif not self.decider.plan and (unfit := self.admission.unfit(stage)):
                self._fail(sid, StageFinished(label, Status.FAILED, v.reason, 0.0, unfit))
            else:
                self.to_run[sid] = v
                heapq.heappush(self._queue, (scheduler.key(sid), self._queued, sid))
                self._queued += 1
                if self.states:
                    self._state(label, State.READY, v.reason)

    def _start_what_fits(self, bound: float = math.inf) -> None:
        """Start the waiting stages, best first, while admission lets them
        (those with a key up to `bound`)."""
        if not self.to_run or self.admission.saturated:
            return
        queue, passed = self._queue, []
        try:
            while queue and not self.admission.saturated and queue[0][0] <= bound:
                entry = heapq.heappop(queue)
                if entry[2] not in self.to_run:
                    continue  # (blocked since it was decided: see _fail)
                try:
                    started = self._start(entry[2])
                except BaseException:
                    passed.append(entry)  # (still waiting, if it did not start: see the check above)
                    raise
                if not started:
                    passed.append(entry)  # (its turn again next time)
                elif self.signals.caught or self.unusable is not None:
                    return
        finally:
            for entry in passed:
                heapq.heappush(queue, entry)

    def _start_next(self, ended: StageId) -> None:
        """Stage `ended` ended well, so its place goes at once to the stages
        already decided and waiting, before its record and the decisions it
        makes ready: the place is not left empty meanwhile (those wait on
        nothing of its: a stage is decided only once all it depends on
        ended).  Not after a failure, which may stop the build, and only the
        stages that go before every stage it makes ready (the critical path:
        `Scheduler.key`), which the loop decides and starts next.  An
        interrupt meanwhile is noted, not raised: `ended` is recorded first."""
        if self.stopping or self.signals.caught or self.cancel.is_set():
            return
        bound = self.scheduler.first_readied(ended)
        if not self._queue or self._queue[0][0] > bound:
            return
        was, self.signals.deferring = self.signals.deferring, True
        try:
            self._start_what_fits(bound)
        finally:
            self.signals.deferring = was

    def _start(self, sid: StageId) -> bool:
        """Start `sid` if admission lets it (else False)."""
        stage = self.graph.stages[sid]
        was, self.signals.deferring = self.signals.deferring, True  # (make's tokens: none lost to an interrupt)
        admitted = self.admission.try_start(stage)
        self.signals.deferring = was
        if not admitted:
            return False
        v = self.to_run.pop(sid)
        label = self.graph.label(sid)
        job = self.recorder.job(stage, v.snap, label, v.reason)
        job.pool = self.pool
        job.started = time.monotonic()
        self.running[sid] = job
        if self.decider.trusted:
            self.decider.distrust()
        self.signals.deferring = True
        try:
            self.executor.start(job)
        except ExecutorError as exc:  # it can run nothing (its cluster does not answer): stop, then say so
            self.signals.deferring = was
            self._unstarted(sid, exc)
            return True
        self.signals.deferring = was
        # Announced once started (what it prints comes later, through the
        # inbox): a stage that could not start is never said to have.
        self.started += 1
        total = len(self.closure) + len(self.settled) - self.skipped
        if self.states:
            self._state(label, State.RUNNING, v.reason)
        self.emit(StageStarted(label, self.started, total, v.reason, expected_s=self.expected.get(sid)))
        return True

    def _unstarted(self, sid: StageId, problem: ExecutorError) -> None:
        """The executor could not start the stage (nor, then, any other): the
        build starts nothing more, and raises `problem` once it has ended."""
        stage = self.graph.stages[sid]
        del self.running[sid]
        self.admission.finished(stage)
        self._finish(sid, StageFinished(self.graph.label(sid), Status.CANCELLED, "not started", 0.0))
        self.unusable = problem
        self.stopping = True

    def _complete(self, done: Done) -> None:
        job, result = done.job, done.result
        stage, label, reason = job.stage, job.label, job.reason
        sid = stage.id
        del self.running[sid]
        was, self.signals.deferring = self.signals.deferring, True  # (tokens on their way back to make)
        self.admission.finished(stage)
        self.signals.deferring = was
        duration = time.monotonic() - job.started
        self.durations[sid] = duration
        ok = result.ok
        if ok and self.to_run and done.captured is not None and not fails(done.captured):
            self._start_next(sid)
        if result.cancelled:
            self.recorder.roll_back(stage, label, quiet=True)
            self._finish(sid, StageFinished(label, Status.CANCELLED, "interrupted", duration))
            return
        detail = result.describe(stage.timeout) if not ok else self.recorder.ran(job, done.captured)
        if detail:
            self.recorder.roll_back(stage, label)
            self._fail(sid, StageFinished(label, Status.FAILED, reason, duration, detail, result.tail))
            return
        self._finish(sid, StageFinished(label, Status.RESTORED if done.restored else Status.RAN, reason, duration))

    def _fail(self, sid: StageId, event: StageFinished) -> None:
        self.failures.append(event)
        self._finish(sid, event)
        if not self.keep_going:
            self.stopping = True
        for down in self.scheduler.fail(sid):
            self.to_run.pop(down, None)
            reason = f"upstream {event.stage} failed"
            self._finish(down, StageFinished(self.graph.label(down), Status.BLOCKED, reason, 0.0))

    def _differs(self, path: str) -> bool:
        """Does the file at `path` hold other contents than this build's stat
        caches last hashed for it (as a dep decided, or an output written)?"""
        return content_differs(path, self.decider.known_hash(path))

    def _state(self, label: str, state: State, reason: str = "") -> None:
        """A StageState event, for a reporter that wants them (the loop's
        calls for each stage look at `states` first: the event costs nothing
        otherwise)."""
        if self.states:
            self.emit(StageState(label, state, reason))

    def _finish(self, sid: StageId, event: StageFinished) -> None:
        status = event.status
        if status is Status.SKIPPED:
            self.skipped += 1
        if self.states:
            if status is Status.BLOCKED:
                self._state(event.stage, State.BLOCKED, event.reason)
            else:
                self._state(event.stage, State.DONE, status.value)
        self.emit(event)
        if status is not Status.FAILED:  # (a failure's status is the scheduler's to set: see _fail)
            self.scheduler.finish(sid, status)

    def _drain_after_interrupt(self) -> None:
        """Stop everything: cancel every running stage and wait for their results."""
        self.signals.deferring = True  # a second Ctrl-C: we are already stopping
        self.cancel.set()
        self.executor.cancel()
        self.stopping = True
        while self.running:
            try:
                item = self.inbox.next(0.5)
            except KeyboardInterrupt:
                continue  # (from a handler not ours)
            if item is None:
                # A result taken off the queue just as the interrupt struck
                # would otherwise be waited for forever.
                for done in [d for sid, d in list(self.inbox.unhandled.items()) if sid in self.running]:
                    self._handle(done)
                continue
            self._handle(item)


# A changed file larger than this is taken as changed without hashing it in
# the build loop (the next build hashes it anyway).
_HASHED_IN_LOOP = 16 << 20


def content_differs(path: str, known: str | None) -> bool:
    """Does the file at `path` hold other contents than those hashed `known`
    (None: never hashed)?  True for anything not a regular file now."""
    from pivotbuild.state.hashing import hash_file

    try:
        st = os.stat(path)
        if known is None or not stat.S_ISREG(st.st_mode) or st.st_size > _HASHED_IN_LOOP:
            return True
        return hash_file(path) != known
    except OSError:
        return True  # gone, or unreadable


def inputs_changed(job: Job, paths: frozenset[str], root: str) -> bool:
    """Does a file among `paths` that `job` reads hold other contents than
    when it started?  (A directory or glob dep with a change under it counts:
    its listing is not hashed again here.)"""
    from pivotbuild.state.kinds import FILE

    if job.snap is None:
        return False
    for dep in job.snap.deps:
        path = os.path.normpath(os.path.join(root, dep.path))
        if dep.kind == FILE:
            if path in paths and content_differs(path, dep.hash):
                return True
        elif (
            path in paths
            or any(p.startswith(path + os.sep) for p in paths)
            or any(os.path.normpath(os.path.join(root, m.path)) in paths for m in dep.matches)
        ):
            return True
    return False
