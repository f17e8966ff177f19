"""Storing outputs in the cache in the background, off the critical path.

A finished stage's outputs are hashed by its worker (the hashes are what the
stages after it decide with), but copying them into the cache can wait: the
stages downstream start at once, and one thread copies behind them, in the
order stages finished (two threads: the copies are mostly waits on the
disk, and one thread falls behind a layer of large outputs).  The run-cache
entry of the record a stage's new result replaced (see Recorder) is written
here too, off the build loop's thread.  The build waits for the copies before
it ends (`finish`); a build killed before that loses only cache copies, never
a result: the lockfile records stand.

The copy is a second whole read of each file; where it proves a racy stat-cache
entry (see `OutputCache.store_deferred`), `confirmed` says so, which spares the
stat cache reading the file yet again when the build ends.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable

from pivotbuild.cache.outputs import OutputCache
from pivotbuild.model import Stage, StageId
from pivotbuild.state.records import StageRecord

_Files = tuple[tuple[str, str], ...]
_Job = tuple[Stage, StageRecord | None, _Files, _Files, str]
THREADS = 2


class Storer:
    """`put` a stage's deferred files; `finish` waits until all are stored.
    `warn` and `confirmed` (stage, path, stat, hash) are called from the
    storer's threads."""

    def __init__(
        self,
        outputs: OutputCache,
        warn: Callable[[str], None],
        confirmed: Callable[[Stage, str, os.stat_result, str], None],
    ) -> None:
        self.outputs = outputs
        self.warn = warn
        self.confirmed = confirmed
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._finishing = threading.Event()  # set: copy at once, wait for nothing
        self._put: set[StageId] = set()
        self._stored: set[StageId] = set()

    def put(self, stage: Stage, remember: StageRecord | None, files: _Files, label: str, confirm: _Files = ()) -> None:
        """Store `files` ((path, hash) pairs) and read `confirm` again (see
        `OutputCache.store_deferred`), and remember `remember` (an earlier
        record of the stage, None for none) in the run cache."""
        if not self._threads:
            for i in range(THREADS):
                thread = threading.Thread(target=self._run, name=f"cache storer {i}", daemon=True)
                thread.start()
                self._threads.append(thread)
        self._put.add(stage.id)
        self._jobs.put((stage, remember, files, confirm, label))

    @property
    def unstored(self) -> set[StageId]:
        """Stages whose outputs did not all reach the cache (a failure, a file
        that changed, or copies abandoned by an interrupt)."""
        return self._put - self._stored

    def finish(self) -> None:
        self._finishing.set()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._finishing.clear()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            stage, remember, files, confirm, label = job
            try:
                if remember is not None:
                    self.outputs.remember(stage, remember)
                confirmed = functools.partial(self.confirmed, stage)
                changed = self.outputs.store_deferred(files, confirmed, self._finishing.wait)
                changed += self.outputs.store_deferred(confirm, confirmed, self._finishing.wait, copy=False)
                if changed:
                    self.warn(f"{', '.join(changed)} changed after {label} finished; the next build will see it")
                    continue
                self._stored.add(stage.id)
            except OSError as exc:
                why = exc.strerror or str(exc)
                self.warn(f"could not store the outputs of {label} in the cache ({why}); recorded, but not cached")
            except Exception as exc:  # a bug of ours must not stop the other stores
                self.warn(f"internal error storing the outputs of {label} in the cache: {exc!r}; not cached")
