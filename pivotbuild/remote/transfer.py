"""push and fetch: move what the selected stages need between the cache and a remote.

What travels: the objects of every output the lockfile records for the
stages (a directory output is its manifest plus its files' objects), and the
stages' run-cache entries with the objects they name.  Only what the other
side lacks is moved, in parallel; every object is verified against its hash
before it is sent and after it arrives, and a corrupt one is removed and
reported, never kept.  A run-cache entry is sent only once every object it
names is on the remote.  An I/O error (the remote vanished, a disk is full)
stops the transfer with a `TransferError`; what was moved is kept.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pivotbuild.cache.pack import PACK_MAX
from pivotbuild.cache.runcache import RunCache, decode_entry, folder_rel, of_stage, stage_key
from pivotbuild.cache.store import OBJECTS, Cache, CorruptObject, MissingObject, parse_manifest
from pivotbuild.errors import PivotError
from pivotbuild.model import StageId
from pivotbuild.remote import Remote
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.kinds import DIR, FILE
from pivotbuild.state.records import FileRecord
from pivotbuild.structs import field, struct

Progress = Callable[[int, int], None]  # (done, total)


class TransferError(PivotError):
    """A transfer stopped: the remote or the local cache could not be read or written."""

    exit_code = 1


@struct
class Report:
    moved: int = 0
    already: int = 0
    problems: list[str] = field(default_factory=list)  # the transfer is incomplete (exit 1)
    notes: list[str] = field(default_factory=list)  # damage found and repaired
    moved_objects: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_moved(self, digest: str) -> None:
        with self._lock:  # workers finish concurrently
            self.moved += 1
            self.moved_objects.add(digest)


@contextlib.contextmanager
def _io(what: str) -> Iterator[None]:
    """Turn an OSError into a TransferError saying `what` failed."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise TransferError(
            f"{what}: {exc.strerror or exc}{where}; check that the remote is mounted and writable and that"
            " there is space, then run the command again (what was already moved is kept)"
        ) from exc


def object_rel(digest: str) -> str:
    return f"{OBJECTS}/{digest[:2]}/{digest[2:]}"


def run_entry_outs(blob: bytes) -> list[FileRecord]:
    return decode_run_entry(blob) or []


def decode_run_entry(blob: bytes) -> list[FileRecord] | None:
    """The outputs a run-cache entry names; None if it does not decode (cut
    short by a killed build, or being written right now)."""
    try:
        return list(decode_entry(blob))
    except ValueError:
        return None


def _parallel(jobs: int, work: Iterable[Callable[[], None]], progress: Progress | None) -> None:
    tasks = list(work)
    done = 0
    if progress:
        progress(0, len(tasks))
    if len(tasks) <= 1 or jobs <= 1:  # (no pool for one object, or for one at a time: threads cost more)
        for task in tasks:
            task()
            if progress:
                progress(1, 1)
        return
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [pool.submit(t) for t in tasks]
        try:
            for future in futures:
                future.result()
                done += 1
                if progress:
                    progress(done, len(tasks))
        except BaseException:
            for future in futures:  # one failure (a full disk) stops the rest
                future.cancel()
            raise


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
        if rec.kind == DIR and not cache.has(rec.hash):
            with _io("cannot list the remote's objects"):
                if holds(remote, [rec]):  # (a --no-checkout build left it there: docs/dask.md)
                    continue
        wanted |= _local_objects(cache, rec, report)
    entries: list[tuple[str, bytes, set[str]]] = []  # (remote path, its bytes, the objects it names)
    runs = RunCache(cache.dir)
    for sid in stages:
        skey = stage_key(sid)
        for name, blob in runs.entries(skey):  # (a log's or a file's: a remote keeps a file per entry)
            rel = f"{folder_rel(skey)}/{name}"
            named = decode_run_entry(blob)
            if named is None:
                continue  # torn (a killed build) or still being written: never sent
            needs: set[str] = set()
            for rec in named:
                found = _local_objects(cache, rec, report)
                wanted |= found
                # A directory whose manifest is not here is not sent: hold its entry back.
                needs |= found | ({rec.hash} if rec.hash else set())
            entries.append((rel, blob, needs))
    ordered = sorted(wanted)
    missing: set[str] = set()

    def look(digest: str) -> Callable[[], None]:
        def task() -> None:
            if not remote.exists(object_rel(digest)):
                missing.add(digest)

        return task

    with _io("cannot list the remote's objects"):
        # In parallel: on an object store each look-up is a request; the first failure stops the rest.
        _parallel(jobs, (look(d) for d in ordered), None)
    to_send = [d for d in ordered if d in missing]
    report.already = len(wanted) - len(to_send)

    def send(digest: str) -> Callable[[], None]:
        def task() -> None:
            try:
                data = cache.packed(digest)
                if data is None:
                    cache.verify(digest)
                with _io(f"cannot send object {digest} to the remote"):
                    if data is not None:
                        remote.write(object_rel(digest), data)
                    else:
                        remote.put(cache.path_of(digest), object_rel(digest))
            except (MissingObject, CorruptObject) as exc:
                state = "corrupt" if isinstance(exc, CorruptObject) else "missing"
                report.problems.append(f"object {digest} is {state} in the local cache; rebuild to heal it")
                return
            report.count_moved(digest)

        return task

    _parallel(jobs, (send(d) for d in to_send), progress)
    # Run-cache entries last, and only those whose objects all made it: an entry
    # on the remote always finds its objects there.
    on_remote = (wanted - set(to_send)) | report.moved_objects
    held_back = 0
    tmp: str | None = None  # made for the first entry sent (most pushes send none)
    with contextlib.ExitStack() as stack:
        for rel, blob, needs in entries:
            if not needs <= on_remote:
                held_back += 1
                continue
            with _io(f"cannot send run-cache entry {rel} to the remote"):
                if not remote.exists(rel):
                    tmp = tmp or stack.enter_context(tempfile.TemporaryDirectory(prefix="pivot-push-"))
                    sent = Path(tmp) / "entry"
                    sent.write_bytes(blob)  # the bytes checked above, whatever the file holds now
                    remote.put(sent, rel)
    if held_back:
        report.problems.append(f"{held_back} run-cache entr(ies) not pushed: objects they name could not be sent")
    return report


def fetch(
    cache: Cache,
    remote: Remote,
    outs: Iterable[FileRecord],
    stages: Iterable[StageId],
    *,
    jobs: int = 4,
    progress: Progress | None = None,
    check: Iterable[FileRecord] = (),
    index: bool = True,
) -> Report:
    """Bring the objects of `outs` and of the stages' run-cache entries into the
    cache.  An object the cache already holds is not fetched again, unless it
    belongs to one of `check` (the outputs checkout will restore next): those
    local copies are verified, and a corrupt one is replaced.

    The small objects fetched go to the cache's pack, indexed at the end
    (Cache.close); with `index=False` the caller indexes it when it is done
    (the Dask executor fetches from many threads at once into the build's
    cache, which the build indexes when it ends: an index written meanwhile
    would race them)."""
    report = Report()
    records = list(outs)
    checked = list(check)
    runs = RunCache(cache.dir)
    for sid in stages:
        skey = stage_key(sid)
        with _io("cannot list the remote's run cache"):
            names = of_stage(skey, remote.list_dir(folder_rel(skey)))
        here = dict(runs.entries(skey)) if names else {}
        for name in names:
            rel = f"{folder_rel(skey)}/{name}"
            local = cache.dir / rel
            if name in here:
                records += run_entry_outs(here[name])
                continue
            if not local.exists():
                with _io(f"cannot fetch run-cache entry {rel}"):
                    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=_mkdir(local.parent))
                    os.close(fd)
                    try:
                        remote.get(rel, Path(tmp))
                        os.replace(tmp, local)
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
            records += run_entry_outs(local.read_bytes())
    # Directory manifests first: they name the objects the directories need.  A
    # corrupt local one is removed by the check, and fetched again.
    manifests = {r.hash for r in records if r.kind == DIR}
    _parallel(
        jobs, (_receive(cache, remote, d, report) for d in sorted(manifests) if not _intact(cache, d, report)), None
    )
    suspect = {r.hash for r in checked if r.kind != DIR}
    for rec in checked:
        if rec.kind == DIR:
            with contextlib.suppress(MissingObject, CorruptObject):  # reported below
                suspect |= {e.hash for e in cache.read_manifest(rec.hash)}
    wanted: set[str] = set()
    for rec in records:
        if rec.kind == DIR:
            try:
                wanted |= {e.hash for e in cache.read_manifest(rec.hash)}
            except MissingObject:
                pass  # not on the remote either: already reported
            except CorruptObject:
                report.problems.append(f"{rec.path}: object {rec.hash} is not a directory manifest; rebuild it")
        elif rec.hash:
            wanted.add(rec.hash)
    to_get = [d for d in sorted(wanted) if not cache.has(d) or (d in suspect and not _intact(cache, d, report))]
    report.already = len(wanted) - len(to_get)
    try:
        _parallel(jobs, (_receive(cache, remote, d, report) for d in to_get), progress)
    finally:
        if index:
            with _io("cannot index the objects fetched into the cache"):
                cache.close()
    return report


def _receive(cache: Cache, remote: Remote, digest: str, report: Report) -> Callable[[], None]:
    def task() -> None:
        rel = object_rel(digest)
        with _io(f"cannot fetch object {digest} from the remote"):
            size = remote.size(rel)
            if size is None:
                report.problems.append(f"object {digest} is not on the remote; push it from a cache that has it")
                return
            fetch = _fetch_small if size <= PACK_MAX else _fetch
            intact = fetch(cache, remote, rel, digest)
        if not intact:
            report.problems.append(f"object {digest} on the remote is corrupt; {_drop(remote, rel)}")
            return
        report.count_moved(digest)

    return task


def _fetch_small(cache: Cache, remote: Remote, rel: str, digest: str) -> bool:
    """Fetch a small object whole and pack it, as a build packs it (no file of
    its own to create); False (keeping nothing) if it is not what it is named."""
    data = remote.read(rel)
    if hash_bytes(data) != digest:
        return False
    cache.store_bytes(data)
    return True


def _fetch(cache: Cache, remote: Remote, rel: str, digest: str) -> bool:
    """Fetch an object into a file of its own; False (keeping nothing) if it
    is not what it is named."""
    return cache.admit(digest, lambda tmp: remote.get(rel, Path(tmp)))


def _drop(remote: Remote, rel: str) -> str:
    """Remove a corrupt object from the remote, so that a push from a cache
    holding the right content replaces it (push sends only what the remote
    lacks); says what happened."""
    try:
        remote.remove(rel)
    except OSError as exc:
        return f"it was not kept, and could not be removed from the remote ({exc.strerror or exc})"
    return "it was not kept, and was removed from the remote, so that the next push replaces it"


def _intact(cache: Cache, digest: str, report: Report) -> bool:
    """Whether the cache holds `digest` uncorrupted (a corrupt copy is removed, and noted)."""
    try:
        cache.verify(digest)
    except MissingObject:
        return False
    except CorruptObject:
        report.notes.append(f"object {digest} in the local cache was corrupt; removed, fetching it again")
        return False
    return True


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


def holds(remote: Remote, outs: Iterable[FileRecord]) -> bool:
    """Does `remote` hold every object of `outs`: each file's, each directory's
    manifest and every file it names?  (Asked before running a stage whose
    recorded outputs an earlier --no-checkout build may have left there:
    build/elsewhere.py, and by `push` of such an output.)  OSError if the
    remote cannot be asked."""
    for rec in outs:
        rel = object_rel(rec.hash)
        if rec.kind == FILE:
            if not remote.exists(rel):
                return False
        elif rec.kind == DIR:
            if not remote.exists(rel):
                return False
            blob = remote.read(rel)
            try:
                if hash_bytes(blob) != rec.hash:
                    return False
                entries = parse_manifest(blob, rec.hash)
            except CorruptObject:
                return False
            if not all(remote.exists(object_rel(entry.hash)) for entry in entries):
                return False
        else:
            return False
    return True
