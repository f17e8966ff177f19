"""Storing outputs in the cache in the background, off the critical path.

A finished stage's outputs are hashed by its worker (the hashes are what the
stages after it decide with), but copying them into the cache can wait: the
stages downstream start at once, and one thread copies behind them, in the
order stages finished.  Only once every file of a stage is stored is its
run-cache entry written, so an entry always finds its objects.  The build
waits for the copies before it ends (`finish`); a build killed before that
loses only cache copies, never a result: the lockfile records stand.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from pivotbuild.cache.outputs import OutputCache
from pivotbuild.model import Stage
from pivotbuild.state.records import StageRecord

_Job = tuple[Stage, StageRecord | None, tuple[tuple[str, str], ...], str]


class Storer:
    """`put` a stage's deferred files; `finish` waits until all are stored.
    `warn` is called from the storer's thread."""

    def __init__(self, outputs: OutputCache, warn: Callable[[str], None]) -> None:
        self.outputs = outputs
        self.warn = warn
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def put(self, stage: Stage, remember: StageRecord | None, files: tuple[tuple[str, str], ...], label: str) -> None:
        """Store `files` ((path, hash) pairs), then, if every one still hashed as
        recorded, remember `remember` in the run cache (None: do not)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cache storer", daemon=True)
            self._thread.start()
        self._jobs.put((stage, remember, files, label))

    def finish(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            stage, remember, files, label = job
            try:
                changed = self.outputs.store_deferred(files)
                if changed:
                    self.warn(
                        f"{', '.join(changed)} changed after {label} finished and before it was stored; "
                        "the run cache will not restore it"
                    )
                elif remember is not None:
                    self.outputs.remember(stage, remember)
            except OSError as exc:
                why = exc.strerror or str(exc)
                self.warn(f"could not store the outputs of {label} in the cache ({why}); recorded, but not cached")
            except Exception as exc:  # a bug of ours must not stop the other stores
                self.warn(f"internal error storing the outputs of {label} in the cache: {exc!r}; not cached")
