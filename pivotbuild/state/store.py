"""The state of every pipeline in a build: its lockfile records, journal and stat cache.

Opening folds any journal a crashed build left behind into the lockfile;
closing folds this build's journal and saves the stat caches.  A damaged
lockfile or journal is reported once through `warn` and treated as absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pivotbuild.model import Pipeline, Stage
from pivotbuild.paths import LOCKFILE
from pivotbuild.state import journal, lockfile
from pivotbuild.state.journal import Journal
from pivotbuild.state.records import LockData, StageRecord
from pivotbuild.state.statcache import StatCache
from pivotbuild.state_files import ensure_state_dir

JOURNAL = "journal"
STATCACHE = "statcache"


@dataclass
class PipelineState:
    dir: str
    lock_path: Path
    journal_path: Path
    records: dict[str, StageRecord]
    journal: Journal
    statcache: StatCache


class StateStore:
    def __init__(self, root: Path, pipelines: Iterable[Pipeline], warn: Callable[[str], None]) -> None:
        self.root = root
        self.warn = warn
        self.pipelines: dict[str, PipelineState] = {}
        ensure_state_dir(root)
        for p in pipelines:
            self.pipelines[p.dir] = self._open(p)

    def _open(self, pipeline: Pipeline) -> PipelineState:
        pdir = self.root / pipeline.dir if pipeline.dir else self.root
        state_dir = ensure_state_dir(pdir)
        lock_path = pdir / LOCKFILE
        journal_path = state_dir / JOURNAL
        shown = f"{pipeline.dir}/{LOCKFILE}" if pipeline.dir else LOCKFILE
        try:
            data = lockfile.read(lock_path)
        except lockfile.LockfileError as exc:
            self.warn(f"{shown}: {exc}; ignoring it, so its stages will run again")
            data = LockData()
        data, damaged = journal.fold(journal_path, lock_path, data) if journal_path.exists() else (data, False)
        if damaged:
            self.warn(
                f"{journal_path}: its last entry was cut short (a crash?); the stages it was recording will run again"
            )
        return PipelineState(
            pipeline.dir,
            lock_path,
            journal_path,
            data.by_name(),
            Journal(journal_path),
            StatCache(state_dir / STATCACHE),
        )

    def state(self, stage: Stage) -> PipelineState:
        return self.pipelines[stage.id.pipeline]

    def record(self, stage: Stage) -> StageRecord | None:
        return self.state(stage).records.get(stage.name)

    def statcache(self, stage: Stage) -> StatCache:
        return self.state(stage).statcache

    def commit(self, stage: Stage, record: StageRecord) -> None:
        """Record a stage's good result durably (journal, fsync'ed) and in memory."""
        st = self.state(stage)
        st.journal.append(record)
        st.records[stage.name] = record

    def files_read(self) -> int:
        """Files whose contents were read (not answered from the stat cache) so far."""
        return sum(st.statcache.files_read for st in self.pipelines.values())

    def close(self) -> None:
        """Fold journals into lockfiles and save stat caches."""
        for st in self.pipelines.values():
            st.journal.close()
            if st.journal_path.exists():
                journal.fold(st.journal_path, st.lock_path, LockData.of(st.records))
            st.statcache.save()
