"""Storing outputs in the cache in the background, off the critical path.

A finished stage's outputs are hashed as it ends (the hashes are what the
stages after it decide with), but copying them into the cache can wait: the
stages downstream start at once, and the copies follow behind them, in the
order stages finished.  Each copy waits until its files' racy window has
passed (see below): about 12 ms after its stage on a local file system
(`stamps.window_ns`), 50 ms on others; none where the read that hashed a
file proved its stamp already (`stamps.read_proves`: ext4 and tmpfs).

Small files (all of a stage's at most `LOOP_MAX` bytes each: objects the
cache packs, so no file is created for them) are copied by the build loop's
own thread, as a clock of its poller (`poller`): when one is due, the loop
has started what it could, and a copy of a few small files costs it less
than waking a thread to do it (each handoff cost a thread about 0.7 ms of
CPU in GIL and futex traffic; docs/performance.md).  Larger ones go to two
threads (the copies are mostly waits on the disk, and one thread falls
behind a layer of large outputs): an object of its own is a file created
and written through the page cache, which cost the loop about 1 ms for a
few hundred KiB here, on the critical path of the stages it then started
late.  The run-cache entry of the record a stage's new result replaced
(see Recorder) is written there too.
The build waits for the copies before it ends (`finish`); a build killed
before that loses only cache copies, never a result: the lockfile records
stand.

The copy is a second whole read of each file; where it proves a racy stat-cache
entry (see `OutputCache.store_deferred`), `confirmed` says so, which spares the
stat cache reading the file yet again when the build ends.  A small file
(at most a pack's object) whose first read proved its stamp is not read
again: the copy is of the bytes that read hashed (`Captured.contents`).

In hardlink mode an output is the cache's object itself, so a process the
stage left behind that writes to it afterwards changes the object too.  Where
its stamp already proved its hash (Cache.ingest_by_link), nothing reads it
again; either way `finish` looks at each such object's stamp once more, and
one that changed goes (with a warning) before the build ends, where a
`push` would otherwise find it.  (Later changes are caught when the object
is next read.)  A file found changed since it was hashed is reported to
`changed`, for the stat cache to forget the hash it holds for it.

An object dropped that way may be one other stages of the build count on:
one whose output hashed the same found the object there and did not store
its own copy.  So every stage that holds a file of that hash counts as not
stored (`unstored`): the next build decides it again and stores what the
cache lacks.  So does a stage whose storing failed (`failed`).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from _queue import SimpleQueue  # (what `queue.SimpleQueue` is: a build does not import `queue`)
from collections import deque
from collections.abc import Callable, Mapping

from pivotbuild.build.executors.poller import Poller
from pivotbuild.cache.outputs import OutputCache
from pivotbuild.cache.pack import PACK_MAX
from pivotbuild.model import Stage, StageId
from pivotbuild.state.hashing import hash_file
from pivotbuild.state.records import StageRecord
from pivotbuild.state.stamps import FINE_WINDOW_NS, Stamp, stamp_now

_Files = tuple[tuple[str, str], ...]
_Job = tuple[Stage, StageRecord | None, _Files, _Files, str, Mapping[str, bytes]]
THREADS = 2
LOOP_MAX = PACK_MAX  # a stage's files up to this size each are copied by the loop's clock (see the module)
_SETTLED_S = FINE_WINDOW_NS / 1e9  # after this, a file written before `put` is past its racy window


class Storer:
    """`put` a stage's deferred files; `finish` waits until all are stored.
    `warn`, `confirmed` (stage, path, stat, hash) and `changed` (stage, path)
    are called from the storer's threads, or the loop's.  Without a
    `poller`, every copy goes to the threads."""

    def __init__(
        self,
        outputs: OutputCache,
        warn: Callable[[str], None],
        confirmed: Callable[[Stage, str, os.stat_result, str], None],
        poller: Poller | None = None,
        *,
        changed: Callable[[Stage, str], None] = lambda _stage, _path: None,
    ) -> None:
        self.outputs = outputs
        self.warn = warn
        self.confirmed = confirmed
        self.changed = changed
        self.poller = poller
        self._due: deque[tuple[float, _Job]] = deque()  # for the loop's thread: (when, job), in order
        self._clocked = False
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._finishing = threading.Event()  # set: copy at once, wait for nothing
        self._put: set[StageId] = set()
        self._stored: set[StageId] = set()
        self._linked: list[tuple[Stage, str, tuple[tuple[str, str, Stamp], ...]]] = []
        self._users: dict[str, list[StageId]] = {}  # hash -> the stages that hold a file of it
        self._dropped: set[str] = set()  # hashes whose objects went (see the module)
        self._failed: set[StageId] = set()  # stages whose storing failed

    def put(
        self,
        stage: Stage,
        remember: StageRecord | None,
        files: _Files,
        label: str,
        confirm: _Files = (),
        *,
        small: bool | None = None,
        settled_in: float | None = None,
        linked: tuple[tuple[str, str, Stamp], ...] = (),
        holds: tuple[tuple[str, os.stat_result, str], ...] = (),
        failed: bool = False,
        contents: Mapping[str, bytes] | None = None,
    ) -> None:
        """Store `files` ((path, hash) pairs) and read `confirm` again (see
        `OutputCache.store_deferred`), and remember `remember` (an earlier
        record of the stage, None for none) in the run cache.  What the
        caller knows from the stats it hashed the files by: `small`, whether
        every one is at most LOOP_MAX bytes (else they are statted here), and
        `settled_in`, the seconds until all are past their racy window
        (stamps.racy_wait_ns: about 12 ms on a local file system; else the
        longest fine window is waited).  (Jobs are copied in the order put:
        one due sooner than the one before it waits for that one.)  `linked`:
        the (path, hash, stamp) of files that are their cache objects, whose
        stamps `finish` compares (see the module).  `holds`: the (path, stat,
        hash) of every file of the stage's cached outputs read (of
        Captured.seen, `files`, `confirm` and `linked` included): it counts
        on their objects, even those the cache had already.
        `failed`: its outputs could not be stored (see the module).
        `contents`: of `files`, those read already by a read that proved
        their stamps (Captured.contents): copied from these bytes."""
        self._put.add(stage.id)
        if failed:
            self._failed.add(stage.id)
        users = self._users
        for _, _, digest in holds:
            users.setdefault(digest, []).append(stage.id)
        if linked:
            self._linked.append((stage, label, linked))
        job = (stage, remember, files, confirm, label, contents or {})
        if remember is None and not files and not confirm:
            self._stored.add(stage.id)  # nothing to do
        elif self.poller is None or not (_small(files, confirm) if small is None else small):
            self._to_threads(job)
        else:
            if not self._clocked:
                self._clocked = True
                self.poller.clocks.append(self._on_time)
            self._due.append((time.monotonic() + (_SETTLED_S if settled_in is None else settled_in), job))

    @property
    def unstored(self) -> set[StageId]:
        """Stages whose outputs did not all reach the cache (a failure, a file
        that changed, or copies abandoned by an interrupt), and those that
        count on an object dropped since (see the module)."""
        gone = (self._put - self._stored) | self._failed
        for digest in self._dropped:
            gone.update(self._users.get(digest, ()))
        return gone

    def finish(self) -> None:
        self._finishing.set()
        if self._clocked and self.poller is not None:
            self._clocked = False
            self.poller.clocks.remove(self._on_time)
        while self._due:
            self._store(self._due.popleft()[1], self._finishing.wait)
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._finishing.clear()
        self._check_linked()

    def _check_linked(self) -> None:
        """Drop the objects of linked outputs written to since they were hashed:
        each object is the output's file itself, so its stamp is the one
        recorded unless the file changed (or the object went meanwhile, its
        change found by the reading again, or a `gc`)."""
        checks, self._linked = self._linked, []
        cache = self.outputs.cache
        for stage, label, files in checks:
            changed = []
            for path, digest, was in files:
                obj = os.fspath(cache.path_of(digest))
                now = stamp_now(obj)
                if now is None or now == was or now[2] != was[2]:
                    continue  # gone, as it was, or another file by now
                try:
                    if hash_file(obj) == digest:
                        continue
                    os.unlink(obj)
                except OSError:
                    continue
                changed.append(path)
                self._dropped.add(digest)
                self.changed(stage, path)
            if changed:
                self._stored.discard(stage.id)
                self.warn(f"{', '.join(changed)} changed after {label} finished; the next build will see it")

    def _on_time(self, now: float) -> float | None:
        """The loop's clock: store the jobs whose files have settled."""
        due = self._due
        while due and due[0][0] <= now:
            # (A file still racy, which the pause would wait for, is stored
            # unconfirmed: the loop never waits.)
            self._store(due.popleft()[1], _no_pause)
        return due[0][0] if due else None

    def _to_threads(self, job: _Job) -> None:
        if not self._threads:
            for i in range(THREADS):
                thread = threading.Thread(target=self._run, name=f"cache storer {i}", daemon=True)
                thread.start()
                self._threads.append(thread)
        self._jobs.put(job)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._store(job, self._finishing.wait)

    def _store(self, job: _Job, pause: Callable[[float], object]) -> None:
        stage, remember, files, confirm, label, contents = job
        try:
            if remember is not None:
                self.outputs.remember(stage, remember)
            confirmed = functools.partial(self.confirmed, stage)
            changed = self.outputs.store_deferred(files, confirmed, pause, contents=contents) if files else []
            if confirm:
                changed += self.outputs.store_deferred(confirm, confirmed, pause, copy=False, dropped=self._dropped.add)
            if changed:
                for path in changed:
                    self.changed(stage, path)
                self.warn(f"{', '.join(changed)} changed after {label} finished; the next build will see it")
                return
            self._stored.add(stage.id)
        except OSError as exc:
            why = exc.strerror or str(exc)
            self.warn(f"could not store the outputs of {label} in the cache ({why}); recorded, but not cached")
        except Exception as exc:  # a bug of ours must not stop the other stores
            self.warn(f"internal error storing the outputs of {label} in the cache: {exc!r}; not cached")


def _no_pause(seconds: float) -> None:
    pass


def _small(*lists: _Files) -> bool:
    """Whether every file named is at most LOOP_MAX bytes (a missing one counts:
    storing it says what became of it)."""
    for files in lists:
        for path, _ in files:
            try:
                if os.stat(path).st_size > LOOP_MAX:
                    return False
            except OSError:
                pass
    return True
