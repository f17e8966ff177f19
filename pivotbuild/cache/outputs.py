"""What a build asks of the cache: keep a stage's outputs, and give them back.

After a stage succeeds, its cacheable outputs are stored (the workspace copy
is never modified) and the run cache remembers them under the stage's inputs.
Before a stage would run, its outputs are restored instead if the run cache
has an entry for exactly its inputs, or if the lockfile's record still
matches everything but the outputs (they were deleted or changed by hand).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pivotbuild.cache.runcache import RunCache
from pivotbuild.cache.store import Cache, CorruptObject, MissingObject
from pivotbuild.model import Stage
from pivotbuild.paths import STATE_DIR
from pivotbuild.snapshot import ABSENT, DIR, FILE, Snapshot
from pivotbuild.state.records import FileRecord, StageRecord
from pivotbuild.state.statcache import StatCache

CACHE_DIR = "cache"


class OutputCache:
    def __init__(self, root: Path, notice: Callable[[str], None]) -> None:
        self.root = root
        self.notice = notice
        self.cache = Cache(root / STATE_DIR / CACHE_DIR, notice)
        self.runs = RunCache(self.cache.dir)

    def keep(self, stage: Stage, snap: Snapshot, outs: tuple[FileRecord, ...], statcache: StatCache) -> None:
        """Store `stage`'s cacheable outputs and remember them in the run cache."""
        stored_all = True
        for out, rec in zip(stage.outs, outs, strict=True):
            if not out.cache:
                stored_all = False
                continue
            path = self.root / rec.path
            if rec.kind == FILE:
                ok = self.cache.store_file(path, rec.hash)
            elif rec.kind == DIR:
                ok = self.cache.store_dir(path, statcache.dir_manifest(path), rec.hash)
            else:
                ok = False
            if not ok:
                stored_all = False
                self.notice(f"{rec.path} changed while it was being stored; not cached")
        if stored_all and outs:
            self.runs.record(stage.id, snap, outs)

    def restore(self, stage: Stage, snap: Snapshot, record: StageRecord | None) -> tuple[FileRecord, ...] | None:
        """Check out the outputs this stage made from these same inputs before, if
        the cache holds them all; returns their records, or None (the stage runs)."""
        if not stage.outs or not all(o.cache for o in stage.outs):
            return None
        outs = self.runs.lookup(stage.id, snap)
        if outs is None and record is not None and _same_inputs(record, snap):
            outs = record.outs
        if outs is None or [o.path for o in outs] != [o.path for o in stage.outs]:
            return None
        if any(o.kind not in (FILE, DIR) or not self.cache.has(o.hash) for o in outs):
            return None
        try:
            for out, rec in zip(stage.outs, outs, strict=True):
                self._check_out(rec, self.root / out.path)
        except CorruptObject as exc:
            self.notice(f"cache object {exc} was corrupt and has been removed; {stage.id.label()} will run")
            return None
        except MissingObject:
            return None
        return outs

    def _check_out(self, rec: FileRecord, dest: Path) -> None:
        if rec.kind == DIR:
            self.cache.checkout_dir(rec.hash, dest)
        else:
            self.cache.checkout_file(rec.hash, dest)


def _same_inputs(record: StageRecord, snap: Snapshot) -> bool:
    mine = [(d.path, d.kind, d.hash) for d in snap.deps]
    theirs = [(d.path, d.kind, d.hash) for d in record.deps]
    return record.fingerprint == snap.fingerprint and mine == theirs and all(o.kind != ABSENT for o in record.outs)
