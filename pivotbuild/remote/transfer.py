"""push and fetch: move what the selected stages need between the cache and a remote.

What travels: the objects of every output the lockfile records for the
stages (a directory output is its manifest plus its files' objects), and the
stages' run-cache entries with the objects they name.  Only what the other
side lacks is moved, in parallel; every object is verified against its hash
before it is sent and after it arrives, and a corrupt one is removed and
reported, never kept.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cattrs
import msgpack

from pivotbuild.cache.runcache import RUNS, stage_key
from pivotbuild.cache.store import OBJECTS, Cache, CorruptObject, MissingObject
from pivotbuild.hashing import hash_file
from pivotbuild.model import StageId
from pivotbuild.remote import Remote
from pivotbuild.snapshot import DIR
from pivotbuild.state.records import FileRecord

Progress = Callable[[int, int], None]  # (done, total)
_converter = cattrs.Converter()


@dataclass
class Report:
    moved: int = 0
    already: int = 0
    problems: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_moved(self) -> None:
        with self._lock:  # workers finish concurrently
            self.moved += 1


def object_rel(digest: str) -> str:
    return f"{OBJECTS}/{digest[:2]}/{digest[2:]}"


def run_entry_outs(blob: bytes) -> list[FileRecord]:
    try:
        data = msgpack.unpackb(blob, raw=False)
        return [_converter.structure(o, FileRecord) for o in data["outs"]]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException, cattrs.BaseValidationError):
        return []


def _parallel(jobs: int, work: Iterable[Callable[[], None]], progress: Progress | None) -> None:
    tasks = list(work)
    done = 0
    if progress:
        progress(0, len(tasks))
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        for future in [pool.submit(t) for t in tasks]:
            future.result()
            done += 1
            if progress:
                progress(done, len(tasks))


def push(
    cache: Cache,
    remote: Remote,
    outs: Iterable[FileRecord],
    stages: Iterable[StageId],
    *,
    jobs: int = 4,
    progress: Progress | None = None,
) -> Report:
    report = Report()
    wanted: set[str] = set()
    for rec in outs:
        wanted |= _local_objects(cache, rec, report)
    entries: list[tuple[str, Path]] = []
    for sid in stages:
        folder = cache.dir / RUNS / stage_key(sid)
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            rel = f"{RUNS}/{folder.name}/{entry.name}"
            entries.append((rel, entry))
            for rec in run_entry_outs(entry.read_bytes()):
                wanted |= _local_objects(cache, rec, report)
    to_send = [d for d in sorted(wanted) if not remote.exists(object_rel(d))]
    report.already = len(wanted) - len(to_send)

    def send(digest: str) -> Callable[[], None]:
        def task() -> None:
            try:
                cache.verify(digest)
            except (MissingObject, CorruptObject) as exc:
                state = "corrupt" if isinstance(exc, CorruptObject) else "missing"
                report.problems.append(f"object {digest} is {state} in the local cache; rebuild to heal it")
                return
            remote.put(cache.path_of(digest), object_rel(digest))
            report.count_moved()

        return task

    _parallel(jobs, (send(d) for d in to_send), progress)
    # Run-cache entries last: an entry on the remote always finds its objects there.
    for rel, path in entries:
        if not remote.exists(rel):
            remote.put(path, rel)
    return report


def fetch(
    cache: Cache,
    remote: Remote,
    outs: Iterable[FileRecord],
    stages: Iterable[StageId],
    *,
    jobs: int = 4,
    progress: Progress | None = None,
) -> Report:
    report = Report()
    records = list(outs)
    for sid in stages:
        key = stage_key(sid)
        for name in remote.list_dir(f"{RUNS}/{key}"):
            local = cache.dir / RUNS / key / name
            if not local.exists():
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=_mkdir(local.parent))
                os.close(fd)
                remote.get(f"{RUNS}/{key}/{name}", Path(tmp))
                os.replace(tmp, local)
            records += run_entry_outs(local.read_bytes())
    # Directory manifests first: they name the objects the directories need.
    manifests = {r.hash for r in records if r.kind == DIR}
    _parallel(jobs, (_receive(cache, remote, d, report) for d in sorted(manifests) if not cache.has(d)), None)
    wanted: set[str] = set()
    for rec in records:
        if rec.kind == DIR:
            if cache.has(rec.hash):
                wanted |= {e.hash for e in cache.read_manifest(rec.hash)}
        elif rec.hash:
            wanted.add(rec.hash)
    to_get = [d for d in sorted(wanted) if not cache.has(d)]
    report.already = len(wanted) - len(to_get)
    _parallel(jobs, (_receive(cache, remote, d, report) for d in to_get), progress)
    return report


def _receive(cache: Cache, remote: Remote, digest: str, report: Report) -> Callable[[], None]:
    def task() -> None:
        rel = object_rel(digest)
        if not remote.exists(rel):
            report.problems.append(f"object {digest} is not on the remote; push it from a cache that has it")
            return
        dest = cache.path_of(digest)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=_mkdir(dest.parent))
        os.close(fd)
        try:
            remote.get(rel, Path(tmp))
            if hash_file(tmp) != digest:
                report.problems.append(f"object {digest} on the remote is corrupt; it was not kept")
                return
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            report.count_moved()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    return task


def _local_objects(cache: Cache, rec: FileRecord, report: Report) -> set[str]:
    if rec.kind == DIR:
        try:
            return {rec.hash, *(e.hash for e in cache.read_manifest(rec.hash))}
        except (MissingObject, CorruptObject):
            report.problems.append(f"{rec.path}: not in the local cache; build it first")
            return set()
    return {rec.hash} if rec.hash else set()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
