"""`pivotbuild gc`: delete cache objects that no lockfile of the project references,
and the run-cache entries that point at them (unless they are kept)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pivotbuild.cache.runcache import RUNS
from pivotbuild.cache.store import OBJECTS, Cache, CorruptObject, MissingObject
from pivotbuild.paths import LOCKFILE
from pivotbuild.remote.transfer import run_entry_outs
from pivotbuild.snapshot import DIR
from pivotbuild.state import lockfile
from pivotbuild.state.records import FileRecord


@dataclass
class GcReport:
    objects: list[str] = field(default_factory=list)  # removed (or, with -n, would be)
    run_entries: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def lockfiles(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if LOCKFILE in filenames:
            yield Path(dirpath) / LOCKFILE


def objects_of(cache: Cache, outs: list[FileRecord]) -> set[str]:
    found: set[str] = set()
    for rec in outs:
        if not rec.hash:
            continue
        found.add(rec.hash)
        if rec.kind == DIR:
            with contextlib.suppress(MissingObject, CorruptObject):
                found |= {e.hash for e in cache.read_manifest(rec.hash)}
    return found


def collect(root: Path, cache: Cache, *, keep_run_cache: bool, dry_run: bool) -> GcReport:
    referenced: set[str] = set()
    for path in lockfiles(root):
        try:
            data = lockfile.read(path)
        except lockfile.LockfileError as exc:
            # Deleting what an unreadable lockfile may need would lose work: stop.
            raise lockfile.LockfileError(f"{path}: {exc}; fix it (or rebuild) before running gc") from exc
        for record in data.stages:
            referenced |= objects_of(cache, list(record.outs))
    report = GcReport()
    runs_dir = cache.dir / RUNS
    entries = sorted(runs_dir.glob("*/*")) if runs_dir.is_dir() else []
    for entry in entries:
        needs = objects_of(cache, run_entry_outs(entry.read_bytes()))
        if keep_run_cache:
            referenced |= needs
        elif needs - referenced:
            report.run_entries.append(str(entry.relative_to(cache.dir)))
            if not dry_run:
                entry.unlink()
    objects_dir = cache.dir / OBJECTS
    for obj in sorted(objects_dir.glob("*/*")) if objects_dir.is_dir() else []:
        digest = obj.parent.name + obj.name
        if digest in referenced or obj.name.startswith(".tmp-"):
            continue
        report.objects.append(digest)
        report.freed_bytes += obj.stat().st_size
        if not dry_run:
            cache.remove(digest)
    return report
