"""The local executor: each admitted stage runs in a worker thread of this
process (stagework.run_stage: its command in a process group of its own, its
outputs hashed and handed to the cache), and its result goes to the inbox.

Workers are reused: starting a thread per stage costs the scheduler more than
a short stage takes.  A worker counts itself idle before it reports its
result, so the stage started in answer to that result finds it waiting.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

from pivotbuild.build.executors.base import Done, Inbox, Job
from pivotbuild.build.executors.lifeline import Lifeline
from pivotbuild.build.executors.stagework import run_stage
from pivotbuild.cache.outputs import OutputCache


class LocalExecutor:
    """Runs stages under `root` with this process's environment.  `outputs`
    hashes (and, with `store`, caches) a finished stage's outputs; `cancel`,
    once set, kills every running stage (shared with the build, which sets it
    on an interrupt)."""

    def __init__(self, root: Path, outputs: OutputCache, inbox: Inbox, cancel: threading.Event, *, store: bool) -> None:
        self.root = root
        self.outputs = outputs
        self.inbox = inbox
        self.cancelled = cancel
        self.store = store
        self.environ = dict(os.environ)  # copied once, not per stage
        self.lifeline = Lifeline()  # kills the running stages if pivotbuild is killed
        self.started = 0  # numbers a retry's event, as the build numbers starts
        self._work: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # workers that finished a stage and wait for the next
        self._workers = 0

    def start(self, job: Job) -> None:
        self.started += 1
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._work.put(job)
        if spawn:
            self._workers += 1
            threading.Thread(target=self._worker, name=f"worker {self._workers}", daemon=True).start()

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        """Every worker is idle now: let each finish; then close the lifeline
        (not after an interrupt that left stages running: they die with us)."""
        for _ in range(self._workers):
            self._work.put(None)
        self.lifeline.close()

    def _worker(self) -> None:
        while (job := self._work.get()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        stage = job.stage
        assert job.snap is not None
        result, captured = run_stage(
            stage,
            job.snap,
            job.label,
            root=self.root,
            environ=self.environ,
            outputs=self.outputs,
            known=job.known,
            store=self.store,
            cancel=self.cancelled,
            put=self.inbox.put,
            started=lambda: self.started,
            lifeline=self.lifeline,
        )
        with self._lock:
            self._idle += 1
        self.inbox.done(Done(job, result, captured))
