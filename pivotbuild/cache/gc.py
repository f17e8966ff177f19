"""`pivotbuild gc`: delete cache objects that no lockfile of the project references,
and the run-cache entries that point at them (unless they are kept).

What a pipeline records counts wherever it is: its lockfile, the journal a
killed build left behind, and its pending (`--no-commit`) results.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pivotbuild.cache.pack import PACKS
from pivotbuild.cache.runcache import RUNS, RunCache
from pivotbuild.cache.store import OBJECTS, Cache, CorruptObject, MissingObject
from pivotbuild.errors import PivotError
from pivotbuild.paths import LOCKFILE, STATE_DIR
from pivotbuild.remote.transfer import run_entry_outs
from pivotbuild.state import journal, lockfile
from pivotbuild.state.kinds import DIR
from pivotbuild.state.records import FileRecord, StageRecord
from pivotbuild.state.store import JOURNAL, PENDING
from pivotbuild.structs import field, struct


class GcError(PivotError):
    """gc cannot tell what the project still needs, so it deletes nothing."""

    exit_code = 1


@struct
class GcReport:
    objects: list[str] = field(default_factory=list)  # removed (or, with -n, would be)
    run_entries: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def pipelines(root: Path) -> Iterator[Path]:
    """Every directory under `root` that records stages: a lockfile, or a journal
    or pending results in its `.pivot/`.  Other dot-directories (`include .tools`)
    are searched too; only state directories and `.git` are not."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (STATE_DIR, ".git")]
        here = Path(dirpath)
        state = here / STATE_DIR
        if LOCKFILE in filenames or (state / JOURNAL).is_file() or (state / PENDING).is_file():
            yield here


def objects_of(cache: Cache, outs: list[FileRecord], needed_by: str = "") -> set[str]:
    """The objects `outs` need: each one's own and, for a directory, its files'.
    With `needed_by` (where the outputs are recorded), a directory whose manifest
    is corrupt stops gc: which objects its files are can no longer be told."""
    found: set[str] = set()
    for rec in outs:
        if not rec.hash:
            continue
        found.add(rec.hash)
        if rec.kind != DIR:
            continue
        try:
            found |= {e.hash for e in cache.read_manifest(rec.hash)}
        except MissingObject:
            pass  # never stored (cache=false, --no-cache) or not fetched: nothing to keep
        except CorruptObject:
            if needed_by:
                raise GcError(
                    f"{needed_by}: the manifest of {rec.path} ({rec.hash}) is corrupt in the cache, so gc cannot"
                    f" tell which objects {rec.path} needs and deleted nothing; delete {rec.path} and run"
                    " 'pivotbuild' (or 'pivotbuild fetch') to bring it back, then run gc again"
                ) from None
    return found


def _recorded(root: Path, pipeline: Path) -> Iterator[tuple[str, list[StageRecord], bool]]:
    """(where, records, strict) for the lockfile, journal and pending results of a
    pipeline.  Pending results were never cached, so a manifest they lack is normal."""
    lock_path = pipeline / LOCKFILE
    shown = lock_path.relative_to(root).as_posix()
    if lock_path.is_file():
        try:
            data = lockfile.read(lock_path)
        except lockfile.LockfileError as exc:
            # Deleting what an unreadable lockfile may need would lose work: stop.
            raise GcError(f"{shown}: {exc}; fix it (or rebuild) before running gc") from exc
        yield shown, list(data.stages), True
    for name, strict in ((JOURNAL, True), (PENDING, False)):
        path = pipeline / STATE_DIR / name
        records, _ = journal.read_records(path)  # a torn tail is rerun, so needs nothing
        yield path.relative_to(root).as_posix(), records, strict


def collect(root: Path, cache: Cache, *, keep_run_cache: bool, dry_run: bool) -> GcReport:
    referenced: set[str] = set()
    for pipeline in pipelines(root):
        for where, records, strict in _recorded(root, pipeline):
            for record in records:
                referenced |= objects_of(cache, list(record.outs), where if strict else "")
    report = GcReport()
    # (Each two-letter folder's entries, its log's and its files: not the
    # lockfiles' copies beside them, which name only what the lockfiles do.)
    runs = RunCache(cache.dir, repair=not dry_run)
    for shard in runs.shards():
        dropped = set()
        for name, blob in runs.entries(shard, shadowed=True):
            needs = objects_of(cache, run_entry_outs(blob))
            if keep_run_cache:
                referenced |= needs
            elif needs - referenced and name not in dropped:  # (a name may be in the log and a file)
                report.run_entries.append(f"{RUNS}/{shard}/{name}")
                dropped.add(name)
        if dropped and not dry_run:
            runs.remove(shard, dropped)
    objects_dir = cache.dir / OBJECTS
    packs_dir = cache.dir / PACKS
    # What a killed or interrupted writer left, each name with its writer's pid:
    # an object being copied, `.tmp-PID-THREAD-RANDOM`; a pack or index being
    # written, `.NAME.PID-RANDOM.tmp`.
    left = [(tmp, tmp.name.split("-")[1]) for tmp in [*objects_dir.glob(".tmp-*"), *objects_dir.glob("*/.tmp-*")]]
    left += [(tmp, tmp.name.rsplit(".", 2)[-2].partition("-")[0]) for tmp in packs_dir.glob(".*.tmp")]
    for tmp, pid in sorted(left):
        if not _writer_alive(pid):
            report.freed_bytes += tmp.stat().st_size
            if not dry_run:
                tmp.unlink(missing_ok=True)
    gone: set[str] = set()
    for obj in sorted(objects_dir.glob("*/*")) if objects_dir.is_dir() else []:
        digest = obj.parent.name + obj.name
        if digest in referenced or obj.name.startswith(".tmp-"):
            continue
        gone.add(digest)
        report.freed_bytes += obj.stat().st_size
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                obj.chmod(0o644)
                obj.unlink()
    packed = cache.packs.sizes()
    unreferenced = [d for d in packed if d not in referenced]
    gone.update(unreferenced)
    report.objects = sorted(gone)  # (an object both a file and packed counts once; its bytes twice)
    report.freed_bytes += sum(packed[d] for d in unreferenced)
    if not dry_run:
        for idx in packs_dir.glob("*.idx") if packs_dir.is_dir() else []:
            if not idx.with_suffix(".pack").exists():  # its pack merged away as it was indexed
                idx.unlink(missing_ok=True)
        if unreferenced:
            try:  # the packs holding them written again without them
                cache.packs.drop(unreferenced)
            except OSError as exc:
                raise GcError(
                    f"deleted the unused object files, but could not rewrite the cache's packs without their"
                    f" unused objects ({exc.strerror or exc}); free some space and run gc again"
                ) from exc
    return report


def _writer_alive(pid: str) -> bool:
    """Whether process `pid` (as a temporary file's name spells it) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # another user's process
    return True
