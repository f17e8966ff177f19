"""The executor seam: what the build loop hands an executor, and how the
result comes back.

An executor starts an admitted stage (`start`) and, from any thread, reports
what it has to say (log lines, a retry, a warning) and then exactly one
`Done` through the build's `Inbox`.  It neither decides nor records: the
loop (run.py) does both, in its own thread, so reporters see events from one
thread only.  `local.py` follows its processes from the loop's own thread,
through the inbox's poller; `dry.py` runs nothing (-n, -q, status); an
executor with threads of its own (Dask) just puts from them.
"""

from __future__ import annotations

import threading
import time
from _queue import SimpleQueue  # (what `queue.SimpleQueue` is: a build does not import `queue`)
from collections import deque
from collections.abc import Callable, Mapping

from pivotbuild.build.executors.poller import Poller
from pivotbuild.build.executors.runner import RunResult
from pivotbuild.cache.outputs import Captured
from pivotbuild.events import Event, Message
from pivotbuild.model import Stage, StageId
from pivotbuild.state.records import FileRecord
from pivotbuild.state.snapshot import Snapshot
from pivotbuild.state.statcache import StatEntry
from pivotbuild.structs import Protocol, struct

# A job pool a stage's children borrow from (build/makejobs.py `for_stage`):
# given the stage's MAKEFLAGS, the MAKEFLAGS naming the pool and the two
# descriptors the stage inherits (the caller closes them once it has started).
PoolForStage = Callable[[str], tuple[str, tuple[int, int]] | None]


@struct(slots=True, eq=False)  # eq=False: see Done
class Job:
    """One admitted stage: what to run (`snap`, None in a plan), why, and the
    stat-cache entries its outputs may be hashed against.  `started` is the
    loop's clock when it started; `pool`, the build's job pool, for a local
    process to share (None: the stage gets none)."""

    stage: Stage
    snap: Snapshot | None
    label: str
    reason: str
    known: Mapping[str, StatEntry]
    started: float = 0.0
    pool: PoolForStage | None = None
    checkout: bool = True  # False: its outputs stay where the executor made them (--no-checkout)
    # With `checkout` False: the outputs recorded for exactly these inputs,
    # which the executor may find where it keeps outputs instead of running.
    recorded: tuple[FileRecord, ...] | None = None


@struct(frozen=True, slots=True, eq=False)
class Done:
    """A job's result; on success, its outputs hashed (and on their way to the cache).
    (eq=False, as Job: messages, never compared.)"""

    job: Job
    result: RunResult
    captured: Captured | None = None
    restored: bool = False  # the outputs were found (Job.recorded), the stage not run


@struct(frozen=True, slots=True, eq=False)
class Changed:
    """Files the build reads changed while it runs (watch mode): no new stage
    starts, the running ones finish, and the watcher builds again; with
    `restart`, a running stage whose inputs are among `paths` (absolute),
    with other contents than it started with, is killed now."""

    paths: frozenset[str]
    root: str  # the project's: what the stages' paths are relative to
    restart: bool = False


Item = Event | Done | Changed


class Inbox:
    """The one inbox the build loop reads: events and results, put from any
    thread, and (`poller`) the descriptors and clocks of the stages running
    in the loop's own thread.  `next` hands the loop one item at a time,
    waiting on the poller when there is none: items the loop's thread put
    itself (a stage's lines, then its result) come in the order put; one put
    from another thread wakes the wait.  Every `Done` is also kept until the
    loop handles it (`handled`), so one taken off just as an interrupt struck
    is not lost for good (see BuildRun)."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit
        self.poller = Poller()
        self.queue: SimpleQueue[Item] = SimpleQueue()  # from other threads
        self._own: deque[Item] = deque()  # from the loop's thread (the one that made the inbox)
        self._loop_thread = threading.get_ident()
        self.unhandled: dict[StageId, Done] = {}

    def put(self, item: Item) -> None:
        if threading.get_ident() == self._loop_thread:
            self._own.append(item)
        else:
            self.queue.put(item)
            self.poller.wake()

    def done(self, done: Done) -> None:
        self.unhandled[done.job.stage.id] = done
        self.put(done)

    def handled(self, done: Done) -> bool:
        """True the first time `done` is handled, False after."""
        return self.unhandled.pop(done.job.stage.id, None) is not None

    def warn(self, text: str) -> None:
        """A warning, emitted now if on the main thread, else queued for it."""
        if threading.current_thread() is threading.main_thread():
            self.emit(Message(text, "warning"))
        else:
            self.put(Message(text, "warning"))

    def next(self, timeout: float) -> Item | None:
        """The next item, waiting at most `timeout` seconds for one; None if
        none came, or if a signal woke the wait (the loop looks at its flags)."""
        own = self._own
        others = self.queue
        poller = self.poller
        poller.open()  # (before looking at the queue: a put from now on wakes the wait)
        until = time.monotonic() + timeout
        while True:
            if own:
                return own.popleft()
            if not others.empty():
                return others.get_nowait()
            # What the stages said or did first (an exit frees a place, and
            # readies the stages after it); what is due on the clocks (the
            # storer's copies, most of all) when nothing is: small incremental
            # build, 0.98 of its time (docs/performance.md, the 31st session).
            if poller.wait(0.0) and not own and others.empty():
                return None
            if own:
                continue
            now = time.monotonic()
            due = poller.due(now)  # (may end a stage: then its items come first)
            if own:
                continue
            if now >= until:
                return None
            signalled = poller.wait((until if due is None else min(until, due)) - now)
            if signalled and not own and others.empty():
                return None

    def take_nowait(self) -> Item | None:
        """An item already waiting, else None."""
        if self._own:
            return self._own.popleft()
        return None if self.queue.empty() else self.queue.get_nowait()


class Executor(Protocol):
    """Runs admitted stages; see the module's docstring."""

    def start(self, job: Job) -> None:
        """Begin `job`; its `Done` follows through the inbox (perhaps before this returns)."""

    def cancel_job(self, job: Job) -> None:
        """Kill `job` if it is running: its `Done` says cancelled."""

    def cancel(self) -> None:
        """Stop every running job: each still reports its `Done`, cancelled."""

    def close(self) -> None:
        """The build is over (every job reported): let go of threads and processes."""
