"""The local executor: each admitted stage runs as a process group of its own,
followed from the build loop's own thread through the inbox's poller (its
pipes, its exit, its timeout: runner.Process); a stage that succeeded has its
outputs hashed and handed to the cache (stagework.capture), and its result
goes to the inbox.

No thread per stage, nor a pool of workers: handing each stage's start,
lines and end between threads cost the build context switches and GIL
traffic (docs/performance.md).  Only outputs too large to hash in a moment
are hashed in a thread (`_Threads`), so a 100 MB output does not hold up
the other stages' ends.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import time
from _queue import SimpleQueue  # (what `queue.SimpleQueue` is: a build does not import `queue`)
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType

from pivotbuild.build.executors import stagework
from pivotbuild.build.executors.base import Done, Inbox, Job
from pivotbuild.build.executors.lifeline import Lifeline
from pivotbuild.build.executors.poller import standby_waits
from pivotbuild.build.executors.runner import TICK_S, Process, RunResult, RunSpec, failed, internal_error
from pivotbuild.build.executors.spawn import Child, Gate, NotGated, Starter
from pivotbuild.cache import pages
from pivotbuild.cache.outputs import Captured, OutputCache, output_stats
from pivotbuild.cache.store import Mode
from pivotbuild.events import Log
from pivotbuild.model import Stage, StageId
from pivotbuild.paths import STATE_DIR, joined
from pivotbuild.state.files import TRASH, sweep_trash

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pivotbuild.build.executors.pystages import PyWorker

# One standby at a time in a process (the waiting thread holds one gate).
_ONE_STANDBY = threading.Lock()

# Outputs up to this size in all are hashed in the loop's thread as their stage
# ends (about 0.3 ms a MiB from the page cache); larger ones, or directories,
# in a thread.  The handoff and the thread's turns at the GIL cost more than
# hashing a few MiB: the big lattice's clean build in hardlink mode, where
# each output is linked and hashed, 0.92, 0.99 and 0.966 of its time at 1
# MiB (8, 8 and 10 alternated rounds), the default mode's 1.00 (8 rounds);
# incremental builds 0.995 (default), 1.034 and 0.992 (hardlink); at 256 KiB
# the clean build was slower (docs/performance.md, the twenty-fifth session).
INLINE_BYTES = 4 << 20


class LocalExecutor:
    """Runs stages under `root` with this process's environment.  `outputs`
    hashes (and, with `store`, caches) a finished stage's outputs; `cancel`,
    once set (by the build on an interrupt, or by another thread), kills
    every running stage."""

    def __init__(self, root: Path, outputs: OutputCache, inbox: Inbox, cancel: threading.Event, *, store: bool) -> None:
        self.root = root
        self.outputs = outputs
        self.inbox = inbox
        self.cancelled = cancel
        self.store = store
        self.environ = dict(os.environ)  # copied once, not per stage
        self.starter = Starter()  # posix_spawn where it starts what Popen would (spawn.py)
        self.lifeline = Lifeline(self.starter)  # kills the running stages if pivotbuild is killed
        self.started = 0  # numbers a retry's event, as the build numbers starts
        self.running: dict[Job, Process] = {}  # each running stage's current attempt
        self._killing = False
        self._pool_lost = False  # the job pool could not be opened for a stage (said once)
        self._py: dict[str, PyWorker] = {}  # per pipeline directory: forks its `py:` stages (made with the first)
        self._next = math.inf  # when a running process is next due (see _on_time)
        self._hashers = _Threads("hasher")
        self.standby: Process | None = None  # a stage started and held before its exec (`stand_by`)
        self._held_lines: list[Log] | None = None  # what the standby printed before it was claimed
        inbox.poller.clocks.append(self._on_time)
        sweep_trash(root / STATE_DIR / TRASH)  # (what a killed build left there: state/files.py)

    def start(self, job: Job) -> None:
        self.started += 1
        assert job.snap is not None
        try:
            spec = stagework.stage_spec(job.stage, job.snap, self.root, self.environ)
        except Exception as exc:  # a bug in our own code: fail the stage, keep the build sane
            self._done(job, internal_error(exc))
            return
        self._attempt(job, spec, 1)

    def stand_by(self, job: Job, after: Collection[StageId]) -> str:
        """Start `job` as the standby: its process made ready (its output
        opened, its session, its descriptors) and held before its exec, to
        go on the moment one of the running stages `after` names exits well
        (the poller's waiting thread lets it go: _nearwake.c), or when
        `claim_standby` says: "held".  "" where it cannot be held, nothing
        started (one standby at a time in a process; a plain process of
        ours, started by _clonespawn; no timeout, no retry).  "ended" where
        it ended at once (it could not be prepared, or cannot start): its
        result is on its way."""
        stage = job.stage
        if self.standby is not None or self._killing or not self.starter.clones or standby_waits is None:
            return ""
        if stage.timeout or stage.retry or stage.py is not None or job.snap is None:
            return ""
        if not _ONE_STANDBY.acquire(blocking=False):
            return ""  # (another build in this process holds one: a build server's)
        try:
            spec = stagework.stage_spec(stage, job.snap, self.root, self.environ)
            if spec.py is not None or spec.timeout:
                _ONE_STANDBY.release()
                return ""
            theirs, ours = standby_waits.gate()  # (sockets: a send wakes the standby on the sender's core)
        except Exception:
            _ONE_STANDBY.release()
            return ""
        self._held_lines = []
        process = None
        try:
            self.started += 1
            process = self._attempt(job, spec, 1, gate=(theirs, ours))
        except NotGated:
            self.started -= 1
            return ""
        finally:
            os.close(theirs)  # (the standby has its own)
            if process is None:
                self._held_lines = None
                os.close(ours)
                _ONE_STANDBY.release()
        if process is None:
            return "ended"
        self.standby = process
        standby_waits.arm(ours, self._pids(after))
        return "held"

    def standby_slots(self, after: Collection[StageId]) -> None:
        """The standby goes on at the clean exit of the stages `after` names
        (none: only when claimed)."""
        _waits().slots(self._pids(after))

    def standby_went(self) -> bool:
        """Whether the standby has gone on (let go by the waiting thread)."""
        return bool(_waits().went())

    def _pids(self, after: Collection[StageId]) -> list[tuple[int, bytes]]:
        """The standby's slots: each of these running stages' process and its
        declared outputs (the waiting thread lets it go only if all exist)."""
        slots = []
        for job, process in self.running.items():
            if job.stage.id in after and type(process.proc) is Child:
                outs = process.outs
                if outs is None:
                    root = self.root
                    outs = process.outs = b"".join(os.fsencode(joined(root, o.path)) + b"\0" for o in job.stage.outs)
                slots.append((process.proc.pid, outs))
        return slots

    def claim_standby(self) -> tuple[float, list[Log]]:
        """The standby goes on, if it has not already: when it went, and the
        lines it printed meanwhile (held back until the build says it started)."""
        process = self._let_go()
        went = _waits().claim()
        if went < 0:
            went = time.monotonic()
        process.start = process.asked = went
        return went, self._lines_held()

    def drop_standby(self) -> tuple[float | None, list[Log]]:
        """The standby's result came before it was claimed: when it went (the
        waiting thread let it go, and it ran; or, now, where it ended by
        itself before its exec: it could not start), None where it was
        cancelled held (it never ran); and the lines it printed."""
        if self.standby is None:  # (cancelled)
            return None, self._lines_held()
        self._let_go()
        waits = _waits()
        went = -1.0 if waits.cancel() else waits.claim()
        return went if went >= 0 else time.monotonic(), self._lines_held()

    def cancel_standby(self) -> bool:
        """End the standby if it is still held (True: it never runs, and its
        result comes, cancelled); False if it went already (then
        `claim_standby`), or there is none."""
        if self.standby is None or not _waits().cancel():
            return False
        self._let_go().cancelled = True
        self._held_lines = None
        return True

    def _let_go(self) -> Process:
        process, self.standby = self.standby, None
        assert process is not None
        _ONE_STANDBY.release()
        return process

    def _lines_held(self) -> list[Log]:
        lines, self._held_lines = self._held_lines or [], None
        return lines

    def cancel(self) -> None:
        self.cancelled.set()
        self._killing = True
        if self.standby is not None:
            self.cancel_standby()  # (one that went is killed with the others)
        for process in list(self.running.values()):
            process.kill()

    def cancel_job(self, job: Job) -> None:
        process = self.running.get(job)
        if process is not None and not (process is self.standby and self.cancel_standby()):
            process.kill()

    def close(self) -> None:
        """Every job has reported: let the hashing threads go; then close the
        lifeline (not after an interrupt that left stages running: they die with us)."""
        if self.standby is not None and not self.cancel_standby():  # (never: each build claims its own)
            self.claim_standby()
        self._hashers.close()
        pages.settle()  # (the old outputs' pages its stages' starts let go: cache/pages.py)
        for worker in self._py.values():
            worker.let_go()  # (all at once: each ends its runners, which may take a moment)
        for worker in self._py.values():
            worker.close()
        self.lifeline.close()
        if self._on_time in self.inbox.poller.clocks:
            self.inbox.poller.clocks.remove(self._on_time)

    def _replaced(self, job: Job) -> Callable[[str, os.stat_result], None] | None:
        """For `prepare`: the default mode's copy in the cache of each large
        output a rerun removes, found by the output's stat-cache entry (its
        hash, if the file is as it was hashed), lets go of its memory
        (cache/pages.py, `let_go`): the new version's copy takes it.  None
        where the outputs are not copied into the cache, or where new
        memory costs no more than that (`pages.wanted`)."""
        if not self.store or self.outputs.mode is not Mode.COPY or not job.known or not pages.wanted():
            return None
        known, cache = job.known, self.outputs.cache

        def replaced(path: str, st: os.stat_result) -> None:
            if st.st_size < pages.MIN_BYTES:
                return
            entry = known.get(path)
            if entry is not None and entry.hash and entry.same_stamp(st):
                pages.let_go(os.fspath(cache.path_of(entry.hash)))

        return replaced

    def _attempt(self, job: Job, spec: RunSpec, attempt: int, gate: Gate | None = None) -> Process | None:
        """The process of this attempt, None if it ended at once.  With a
        `gate`, a standby's (NotGated: nothing was started)."""
        stage, label, put = job.stage, job.label, self.inbox.put
        try:
            if attempt > 1:
                put(stagework.retried(label, self.started, attempt, stage.retry))
            problem = stagework.prepare(self.root, stage, spec, self.starter.plain, self._replaced(job))
            if problem:
                put(Log(label, "stderr", problem))
                self._done(job, failed(problem))
                return None

            held = self._held_lines if gate is not None else None

            def line(stream: str, text: str) -> None:
                if held is not None and held is self._held_lines:  # (a standby's, not yet said to have started)
                    held.append(Log(label, stream, text))
                else:
                    put(Log(label, stream, text))

            def ended(result: RunResult) -> None:
                self._ended(job, spec, attempt, result)

            pooled = self._pooled(job, spec)
            starter = self.starter if spec.py is None else self._python(spec.py.pipeline_dir).starter(spec.py)
            lifeline = self.lifeline if spec.py is None else None  # (a py: stage's worker is its lifeline)
            if pooled is None:
                process = Process(spec, line, ended, self.inbox.poller, lifeline, starter=starter, gate=gate)
            else:
                makeflags, fds = pooled
                try:
                    process = Process(
                        spec,
                        line,
                        ended,
                        self.inbox.poller,
                        lifeline,
                        starter=starter,
                        more_env={"MAKEFLAGS": makeflags},
                        pass_fds=fds,
                        gate=gate,
                    )
                finally:
                    for fd in fds:
                        os.close(fd)  # (the stage has its own)
        except NotGated:
            raise
        except Exception as exc:  # a bug in our own code: fail the stage
            self._done(job, internal_error(exc))
            return None
        if process.ended:
            return None  # (ended at once: `ended` has seen to it, and perhaps to its retry)
        self.running[job] = process
        self._next = min(self._next, process.start + TICK_S, process.deadline or math.inf)
        if self._killing:
            process.kill()
        return process

    def _python(self, pipeline_dir: str) -> PyWorker:
        """The worker of the `py:` stages of one pipeline (one per pipeline: two
        pipelines may each have a `steps.py`, and a worker keeps what it imported)."""
        worker = self._py.get(pipeline_dir)
        if worker is None:
            from pivotbuild.build.executors.pystages import PyWorker

            worker = self._py[pipeline_dir] = PyWorker()
        return worker

    def _pooled(self, job: Job, spec: RunSpec) -> tuple[str, tuple[int, int]] | None:
        """The build's job pool for one attempt of `job`, if there is one: the
        MAKEFLAGS naming it, and the descriptors the stage inherits (closed
        here once it has started).  None without one, and one warning, if
        the pool cannot be opened (the stage's make or ninja then run as
        they would on their own)."""
        if job.pool is None or self._pool_lost:
            return None
        try:
            return job.pool(spec.env.get("MAKEFLAGS", ""))
        except OSError as exc:
            self._pool_lost = True
            self.inbox.warn(
                f"the job pool cannot be opened for the stages ({exc.strerror or exc}): a make or ninja"
                " in a stage from now on runs without pivotbuild's jobserver"
            )
            return None

    def _ended(self, job: Job, spec: RunSpec, attempt: int, result: RunResult) -> None:
        self.running.pop(job, None)
        ok = result.ok
        if not ok and not result.cancelled and attempt <= job.stage.retry:
            self._attempt(job, spec, attempt + 1)
        elif not ok:
            self._done(job, result)
        else:
            stats = self._stats(job.stage)
            if _small(stats):
                self._capture(job, result, stats)
            else:
                self._hashers.run(lambda: self._capture(job, result, stats))

    def _capture(self, job: Job, result: RunResult, stats: list[os.stat_result | None] | None) -> None:
        """Hash the outputs of `job`, which succeeded (`stats`: theirs, taken
        as it ended), and report it (in any thread)."""
        result, captured = stagework.capture(
            job.stage,
            result,
            outputs=self.outputs,
            known=job.known,
            store=self.store,
            label=job.label,
            put=self.inbox.put,
            stats=stats,
        )
        self._done(job, result, captured)

    def _done(self, job: Job, result: RunResult, captured: Captured | None = None) -> None:
        self.inbox.done(Done(job, result, captured if result.ok else None))

    def _stats(self, stage: Stage) -> list[os.stat_result | None] | None:
        """Each output's stat (None: missing), as capturing takes them; None
        if one cannot be had (capturing then says why)."""
        try:
            return output_stats(self.root, stage)
        except OSError:
            return None

    def _on_time(self, now: float) -> float | None:
        """The poller's clock: notice a cancel set by another thread, and let
        each running process act on what is due (each is due at least a tick
        after it was last asked, so this scans them all at most once a tick
        unless a timeout falls sooner)."""
        if not self.running:
            return None
        if not self._killing and self.cancelled.is_set():
            self.cancel()
        if now < self._next:
            return self._next
        soonest = now + TICK_S
        for process in list(self.running.values()):
            due = process.on_time(now)  # (may end it: then `running` no longer holds it)
            if due is not None and due < soonest:
                soonest = due
        self._next = soonest
        return soonest if self.running else None


def _waits() -> ModuleType:
    assert standby_waits is not None  # (a standby is held only where it is)
    return standby_waits


def _small(stats: list[os.stat_result | None] | None) -> bool:
    """Whether outputs of these stats are files of at most INLINE_BYTES in
    all (a missing one counts as small: capturing finds it missing, as it
    says why none could be had)."""
    if stats is None:
        return True
    total = 0
    for st in stats:
        if st is None:
            continue
        if not stat.S_ISREG(st.st_mode):
            return False
        total += st.st_size
        if total > INLINE_BYTES:
            return False
    return True


class _Threads:
    """Threads for work the loop's thread should not wait on, reused from
    stage to stage (started as needed: a thread waiting means none is started)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._work: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def run(self, work: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._work.put(work)
        if spawn:
            self._threads += 1
            threading.Thread(target=self._worker, name=f"{self.name} {self._threads}", daemon=True).start()

    def close(self) -> None:
        for _ in range(self._threads):
            self._work.put(None)
        self._threads = 0

    def _worker(self) -> None:
        while (work := self._work.get()) is not None:
            work()
            with self._lock:
                self._idle += 1
