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
from _queue import SimpleQueue  # (what `queue.SimpleQueue` is: a build does not import `queue`)
from collections.abc import Callable
from pathlib import Path

from pivotbuild.build.executors import stagework
from pivotbuild.build.executors.base import Done, Inbox, Job
from pivotbuild.build.executors.lifeline import Lifeline
from pivotbuild.build.executors.runner import TICK_S, Process, RunResult, RunSpec, failed, internal_error
from pivotbuild.build.executors.spawn import Starter
from pivotbuild.cache import pages
from pivotbuild.cache.outputs import Captured, OutputCache, output_stats
from pivotbuild.cache.store import Mode
from pivotbuild.events import Log
from pivotbuild.model import Stage
from pivotbuild.paths import STATE_DIR
from pivotbuild.state.files import TRASH, sweep_trash

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pivotbuild.build.executors.pystages import PyWorker

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

    def cancel(self) -> None:
        self.cancelled.set()
        self._killing = True
        for process in list(self.running.values()):
            process.kill()

    def cancel_job(self, job: Job) -> None:
        process = self.running.get(job)
        if process is not None:
            process.kill()

    def close(self) -> None:
        """Every job has reported: let the hashing threads go; then close the
        lifeline (not after an interrupt that left stages running: they die with us)."""
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

    def _attempt(self, job: Job, spec: RunSpec, attempt: int) -> None:
        stage, label, put = job.stage, job.label, self.inbox.put
        try:
            if attempt > 1:
                put(stagework.retried(label, self.started, attempt, stage.retry))
            problem = stagework.prepare(self.root, stage, spec, self.starter.plain, self._replaced(job))
            if problem:
                put(Log(label, "stderr", problem))
                self._done(job, failed(problem))
                return

            def line(stream: str, text: str) -> None:
                put(Log(label, stream, text))

            def ended(result: RunResult) -> None:
                self._ended(job, spec, attempt, result)

            pooled = self._pooled(job, spec)
            starter = self.starter if spec.py is None else self._python(spec.py.pipeline_dir).starter(spec.py)
            lifeline = self.lifeline if spec.py is None else None  # (a py: stage's worker is its lifeline)
            if pooled is None:
                process = Process(spec, line, ended, self.inbox.poller, lifeline, starter=starter)
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
                    )
                finally:
                    for fd in fds:
                        os.close(fd)  # (the stage has its own)
        except Exception as exc:  # a bug in our own code: fail the stage
            self._done(job, internal_error(exc))
            return
        if process.ended:
            return  # (ended at once: `ended` has seen to it, and perhaps to its retry)
        self.running[job] = process
        self._next = min(self._next, process.start + TICK_S, process.deadline or math.inf)
        if self._killing:
            process.kill()

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
