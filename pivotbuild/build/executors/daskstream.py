"""A Dask stage's output, line by line as it prints it (docs/dask.md).

On the worker, `Lines` collects what the stage prints: the last `TAIL`
lines go back with the task's result, and every line is also published, in
batches at most `FLUSH_S` apart, as a Dask event (`Worker.log_event`) on the
build's topic: `[task key, run, [[stream, line], ...]]`, `run` naming this
run of the task (Dask runs a task again, under the same key, when its worker
is lost).  The build's client subscribes to the topic (`Streams`), and each
line reaches the terminal as a shell stage's does locally, while the stage
runs; a run that starts over says so, and its lines are counted afresh.

Events and results travel by different paths, so when the result comes the
build takes from its tail only the lines its events did not bring (it
counts those of the result's run; the result says how many were printed),
and drops the events that come later.  The topic is the build's client's
own id: the scheduler forgets that topic's events once the client has been
gone for `distributed.scheduler.events-cleanup-delay` (an hour by default),
so builds do not pile up lines in a long-lived scheduler.  (The scheduler
logs its own events about the client there too: not ours, ignored.)
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from pivotbuild.events import Event, Log

TAIL = 1000  # lines sent back with the result: a stage's last, whatever the events did
FLUSH_S = 0.1  # the most a printed line waits on the worker before it is sent
BATCH = 200  # lines in one event at most (a stage printing fast sends more events, not bigger ones)
RAN_AGAIN = "pivotbuild: the stage's worker was lost; the stage starts over on another"


class Lines:
    """The lines of one run of a task on a worker: kept (the tail) and, when
    the task runs on a Dask worker with a topic to publish on, sent as they come."""

    def __init__(self, topic: str) -> None:
        self.tail: deque[tuple[str, str]] = deque(maxlen=TAIL)
        self.total = 0  # lines printed in all (the tail holds the last of them)
        self.run = uuid.uuid4().hex  # this run of the task
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # one batch at a time, in order
        self._batch: list[list[str]] = []
        self._publish = _publisher(topic, self.run) if topic else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._publish is not None:
            self._thread = threading.Thread(target=self._flusher, name="pivot-lines", daemon=True)
            self._thread.start()

    def add(self, stream: str, line: str) -> None:
        with self._lock:
            self.tail.append((stream, line))
            self.total += 1
            if self._publish is not None:
                self._batch.append([stream, line])
                full = len(self._batch) >= BATCH
            else:
                full = False
        if full:
            self._flush()

    def close(self) -> None:
        """Send what is left (before the result goes: it says how many were printed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._flush()

    def _flusher(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self._flush()

    def _flush(self) -> None:
        with self._sending:  # (taken and sent under one lock: batches go out in the order printed)
            with self._lock:
                batch, self._batch = self._batch, []
            if batch and self._publish is not None:
                with contextlib.suppress(Exception):  # (the lines still go back in the result's tail)
                    self._publish(batch)


def this_task() -> tuple[Any, str] | None:
    """The Dask worker running the calling task, and the task's key; None
    outside a Dask worker (`Any`: distributed's types are partial)."""
    try:
        from distributed import get_worker

        worker: Any = get_worker()
        return worker, worker.get_current_task()
    except (ImportError, ValueError):
        return None


def _publisher(topic: str, run: str) -> Callable[[list[list[str]]], None] | None:
    """How this run of the task publishes a batch of lines; None outside a Dask worker."""
    task = this_task()
    if task is None:
        return None
    worker, key = task
    return lambda batch: worker.log_event(topic, [key, run, batch])


class Streams:
    """The build's side: the lines of each running task, by key, put to the
    build as `Log` events of its stage as they arrive."""

    def __init__(self, put: Callable[[Event], None]) -> None:
        self.put = put
        self._lock = threading.Lock()
        self._open: dict[str, list[Any]] = {}  # key -> [stage label, run heard from, its lines heard]

    def expect(self, key: str, label: str) -> None:
        """A task of `label`'s is submitted under `key`: its lines are to come."""
        with self._lock:
            self._open[key] = [label, "", 0]

    def heard(self, event: Any) -> None:
        """A Dask event of the topic: `(time, [key, run, [[stream, line], ...]])`
        (on the client's thread)."""
        try:
            _, msg = event
            # (a list sent, a tuple received over TCP: msgpack's arrays)
            key, run, batch = msg if isinstance(msg, (list, tuple)) else ((), (), ())
        except (TypeError, ValueError):
            return  # (not ours: the scheduler's own events about the client)
        with self._lock:
            known = self._open.get(key) if isinstance(key, str) else None
            if known is None:
                return  # (a task of another build, or come after its result)
            label = known[0]
            if known[1] != run:  # the first run's lines, or a run started over
                if known[1]:
                    self.put(Log(label, "stderr", RAN_AGAIN))
                known[1], known[2] = run, 0
            known[2] += len(batch)
            for stream, line in batch:
                self.put(Log(label, stream, line))

    def done(self, key: str, run: str, tail: tuple[tuple[str, str], ...], total: int) -> None:
        """The result of the task's run `run` came, with its last lines
        (`tail`) of `total`: put those its events did not bring, and hear no
        more of it."""
        with self._lock:
            known = self._open.pop(key, None)
        if known is None:
            return
        label, heard_run, heard = known
        if heard_run != run:  # (none of this run's lines heard: a run started over, events still on their way)
            if heard_run:
                self.put(Log(label, "stderr", RAN_AGAIN))
            heard = 0
        first = total - len(tail)  # the number of the tail's first line
        for stream, line in tail[max(heard - first, 0) :]:
            self.put(Log(label, stream, line))

    def forget(self, key: str) -> None:
        """The task ended without a result (cancelled, lost): hear no more of it."""
        with self._lock:
            self._open.pop(key, None)
