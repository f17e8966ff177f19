"""The state of every pipeline in a build: its lockfile records, journal and stat cache.

Opening folds any journal a crashed build left behind into the lockfile;
closing folds this build's journal and saves the stat caches.  A damaged
lockfile, journal, pending file or stat cache is reported once through
`warn` (one warning per file) and treated as absent, or as holding only
what came before the damage; each is rewritten whole by this build.
A read-only store (`status` from inside a stage, while the stage's build
holds the project lock) writes nothing, not even a journal's fold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from pivotbuild.model import Pipeline, Stage
from pivotbuild.paths import LOCKFILE, STATE_DIR
from pivotbuild.state import journal, lockfile
from pivotbuild.state.files import ensure_state_dir, remove, write_atomic
from pivotbuild.state.journal import Journal
from pivotbuild.state.records import StageRecord
from pivotbuild.state.statcache import StatCache
from pivotbuild.structs import struct

JOURNAL = "journal"
PENDING = "pending"
STATCACHE = "statcache"


@struct
class PipelineState:
    """One pipeline's state files, open for a build."""

    dir: str
    lock_path: Path
    journal_path: Path
    records: lockfile.Records
    journal: Journal
    statcache: StatCache
    pending_path: Path
    pending: dict[str, StageRecord]  # --no-commit results, newer than `records`


class StateStore:
    def __init__(
        self, root: Path, pipelines: Iterable[Pipeline], warn: Callable[[str], None], *, read_only: bool = False
    ) -> None:
        """`read_only`: the state as the files hold it now, journals applied in
        memory; nothing is created, folded or saved (without the project lock:
        a running build may be appending to a journal)."""
        self.root = root
        self.warn = warn
        self.read_only = read_only
        self.pipelines: dict[str, PipelineState] = {}
        self._warned: set[Path] = set()  # files already reported as damaged
        if not read_only:
            ensure_state_dir(root)
        for p in pipelines:
            self.pipelines[p.dir] = self._open(p)

    def _open(self, pipeline: Pipeline) -> PipelineState:
        pdir = self.root / pipeline.dir if pipeline.dir else self.root
        state_dir = pdir / STATE_DIR if self.read_only else ensure_state_dir(pdir, self.root)
        lock_path = pdir / LOCKFILE
        journal_path = state_dir / JOURNAL
        try:
            data = lockfile.read_records(lock_path)
        except lockfile.LockfileError as exc:
            self._damaged(lock_path, f"{exc}; ignoring it, so its stages will run again")
            data = lockfile.Records()
        if self.read_only:
            # (A tail cut short is the running build's next frame, half written: no damage.)
            for record in journal.read_records(journal_path)[0]:
                data[record.name] = record
            damaged = False
        else:
            damaged = journal.fold(journal_path, lock_path, data)[1] if journal_path.exists() else False
        if damaged:
            self._damaged(
                journal_path,
                "damaged or cut short (a crash?); its entries up to there are kept,"
                " and the stages recorded after them will run again",
            )
        pending_path = state_dir / PENDING
        pending, torn = journal.read_records(pending_path)
        # (Read-only: a last frame cut short is the running build's append, half written: no damage.)
        statcache = StatCache(state_dir / STATCACHE, torn_is_partial=self.read_only)
        if statcache.damaged:
            self._damaged(statcache.path, f"{statcache.damaged}; ignoring it, so files are hashed again")
        st = PipelineState(
            pipeline.dir,
            lock_path,
            journal_path,
            data,
            Journal(journal_path),
            statcache,
            pending_path,
            {r.name: r for r in pending},
        )
        if torn:
            self._damaged(
                pending_path,
                "damaged or cut short; the --no-commit results before the damage are kept,"
                " and the stages recorded after it will run again",
            )
            if not self.read_only:
                _save_pending(st)  # mended now, so the next build does not warn again
        return st

    def _damaged(self, path: Path, text: str) -> None:
        """Warn once per file that `path` is damaged (`text` says what follows)."""
        if path not in self._warned:
            self._warned.add(path)
            self.warn(f"{self._shown(path)}: {text}")

    def _shown(self, path: Path) -> str:
        """`path` as the user knows it: relative to the project root."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def state(self, stage: Stage) -> PipelineState:
        return self.pipelines[stage.id.pipeline]

    def record(self, stage: Stage) -> StageRecord | None:
        """The stage's latest result: a pending (--no-commit) one, else the lockfile's."""
        st = self.state(stage)
        pending = st.pending.get(stage.name)
        if pending is not None:
            return pending
        try:
            return st.records.get(stage.name)
        except lockfile.LockfileError as exc:
            self._damaged(st.lock_path, f"{exc}; ignoring it, so the stage will run again")
            return None

    def committed(self, stage: Stage) -> StageRecord | None:
        """The stage's record in the lockfile (not a pending --no-commit one)."""
        st = self.state(stage)
        try:
            return st.records.get(stage.name)
        except lockfile.LockfileError:
            return None

    def pending(self, stage: Stage) -> StageRecord | None:
        return self.state(stage).pending.get(stage.name)

    def statcache(self, stage: Stage) -> StatCache:
        return self.state(stage).statcache

    def commit(self, stage: Stage, record: StageRecord, *, pending: bool = False) -> None:
        """Record a stage's good result durably (journal, fsync'ed) and in memory;
        with `pending`, keep it out of the lockfile until `promote`."""
        st = self.state(stage)
        if pending:
            st.pending[stage.name] = record
            _save_pending(st)
            return
        st.records.set(stage.name, record, st.journal.append(record))
        if st.pending.pop(stage.name, None) is not None:
            _save_pending(st)

    def promote(self, stage: Stage) -> None:
        """Move a pending result into the lockfile."""
        record = self.state(stage).pending.get(stage.name)
        if record is not None:
            self.commit(stage, record)

    def known_hash(self, path: str) -> str | None:
        """The hash a pipeline's stat cache holds for the file at `path` (absolute), if any."""
        for st in self.pipelines.values():
            entry = st.statcache.entries.get(path)
            if entry is not None:
                return entry.hash
        return None

    def files_read(self) -> int:
        """Files whose contents were read (not answered from the stat cache) so far."""
        return sum(st.statcache.files_read for st in self.pipelines.values())

    def stamps(self) -> tuple[tuple[int, ...] | None, ...]:
        """The stamp of each state file as it is now: equal later if, and only
        if, no other process has written one since (see `Engine`, resident)."""
        found: list[tuple[int, ...] | None] = []
        for _, st in sorted(self.pipelines.items()):
            for path in (st.lock_path, st.pending_path, st.statcache.path, st.journal_path):
                try:
                    s = os.stat(path)
                except FileNotFoundError:
                    found.append(None)
                else:
                    found.append((s.st_mtime_ns, s.st_size, s.st_ino, s.st_ctime_ns))
        return tuple(found)

    def reopen(self) -> None:
        """Ready for another build after `close`, its records and stat cache
        still in memory (the files as `close` left them: see `stamps`)."""
        for st in self.pipelines.values():
            st.journal = Journal(st.journal_path)
            st.statcache.begin()

    def close(self) -> None:
        """Fold journals into lockfiles and save stat caches (read-only: nothing)."""
        if self.read_only:
            return
        for st in self.pipelines.values():
            # (The lockfile written with its fsync right after holds every
            # record the journal does: the journal's own last flush is spared,
            # unless that write fails.)
            st.journal.close(sync=not st.journal.appended)
            if st.journal.appended:
                # Opening folded (and removed) any older journal, and the build
                # lock kept every other pivotbuild out since: the journal holds
                # exactly what this build appended, all of it in `records`
                # already, so it need not be read back and decoded.
                # The cache keeps a copy: the run cache writes no entry for a
                # stage's current record, and the copy restores those outputs if
                # the lockfile is damaged or lost (OutputCache.restore).
                try:
                    lockfile.write(st.lock_path, st.records, copy_to=lockfile.copy_path(self.root, st.dir))
                except BaseException:
                    _flush(st.journal_path)  # (the journal stays: its records must reach the disk after all)
                    raise
                remove(st.journal_path)  # (its blocks freed on a thread: state/files.py, `Frees`)
                st.journal.appended = 0  # folded: closing again (the build's, then its lock's) writes nothing
            st.statcache.save()


def _flush(path: Path) -> None:
    """fsync the file at `path`, if it can be."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_pending(st: PipelineState) -> None:
    """Rewrite the pending records (durably, atomically), or remove the file if none are left."""
    if st.pending:
        write_atomic(st.pending_path, b"".join(journal.frame(r) for _, r in sorted(st.pending.items())))
    else:
        st.pending_path.unlink(missing_ok=True)
