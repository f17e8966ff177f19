"""What a build asks of the cache: keep a stage's outputs, and give them back.

After a stage succeeds, its cacheable outputs are stored (the workspace copy
is never modified) and the run cache remembers them under the stage's inputs.
Before a stage would run, its outputs are restored instead if the run cache
has an entry for exactly its inputs, or if the lockfile's record still
matches everything but the outputs (they were deleted or changed by hand).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from pathlib import Path
from types import MappingProxyType

from pivotbuild.cache.pack import PACK_MAX
from pivotbuild.cache.runcache import RunCache
from pivotbuild.cache.store import Cache, CorruptObject, MissingObject, Mode
from pivotbuild.model import Out, Stage, StageId
from pivotbuild.paths import LOCKFILE, STATE_DIR, joined
from pivotbuild.remote import config
from pivotbuild.state import lockfile
from pivotbuild.state.files import remove_tree
from pivotbuild.state.hashing import (
    ENTRY_LINK,
    ManifestEntry,
    hash_bytes,
    link_hash,
    manifest_bytes,
    walk_dir,
)
from pivotbuild.state.kinds import ABSENT, DIR, FILE
from pivotbuild.state.records import FileRecord, StageRecord
from pivotbuild.state.snapshot import Snapshot
from pivotbuild.state.stamps import Stamp, hash_proving, is_racy, racy_wait_ns, read_proves, read_proving, stamp
from pivotbuild.state.statcache import StatCache, StatEntry
from pivotbuild.structs import struct

_cache = attrgetter("cache")  # (in C: whether each output of a stage is cached, per stage)

CACHE_DIR = "cache"


_NONE: frozenset[str] = frozenset()
_NO_CONTENTS: Mapping[str, bytes] = MappingProxyType({})


@struct(frozen=True, slots=True)
class Captured:
    """A finished stage's outputs: their records, the (path, stat, hash) of each
    file read to hash them (for the stat cache), the outputs that are missing,
    whether every output was stored or is to be (so the run cache may remember
    them), the (path, hash) of the files still to copy into the cache, and of
    those only to read again, to prove their stat-cache entries (see
    `store_deferred`); the files whose stamps prove their hashes already
    (hardlink mode's link, Cache.ingest_by_link, or a read that waited for a
    write under way, stamps.hash_proving); and, in hardlink mode, the
    outputs that became their cache objects, with their stamps
    (Storer.finish looks at them again)."""

    outs: tuple[FileRecord, ...]
    seen: tuple[tuple[str, os.stat_result, str], ...]
    missing: tuple[str, ...]
    stored: bool
    deferred: tuple[tuple[str, str], ...] = ()
    confirm: tuple[tuple[str, str], ...] = ()
    read_ns: int = 0  # when the reads behind `seen` began (0: unknown, so none of them proves its stamp)
    proven: frozenset[str] = _NONE  # of `seen`'s paths: those whose stamps prove their hashes already
    linked: tuple[tuple[str, str, Stamp], ...] = ()  # (path, hash, stamp): outputs that are their cache objects
    # Of `deferred`, the small files whose reads proved their stamps: the bytes
    # read, which `store_deferred` copies instead of reading the file again.
    contents: Mapping[str, bytes] = _NO_CONTENTS
    uncached: bool = False  # storing failed (a full disk): recorded, but not stored (stagework.capture)


class _Reads:
    """What `capture` gathers file by file (see Captured)."""

    __slots__ = ("confirm", "contents", "deferred", "linked", "proven", "read_ns", "seen")

    def __init__(self, defer: bool, copies: bool) -> None:
        self.read_ns = time.time_ns()  # (before any of the reads)
        self.seen: list[tuple[str, os.stat_result, str]] = []
        self.deferred: list[tuple[str, str]] | None = [] if defer and copies else None
        self.confirm: list[tuple[str, str]] | None = [] if defer else None
        self.linked: list[tuple[str, str, Stamp]] = []
        self.proven: list[str] = []
        self.contents: dict[str, bytes] = {}


def output_stats(root: Path, stage: Stage) -> list[os.stat_result | None]:
    """Each of the stage's outputs' stat, None for a missing one (raises
    OSError for one that cannot be statted)."""
    found: list[os.stat_result | None] = []
    for out in stage.outs:
        try:
            found.append(os.stat(joined(root, out.path)))
        except (FileNotFoundError, NotADirectoryError):
            found.append(None)
    return found


class OutputCache:
    def __init__(self, root: Path, notice: Callable[[str], None], *, building: bool = False) -> None:
        """`building`: a config.toml that cannot be used is a warning (the
        build checks out in the default mode), not an error."""
        self.root = root
        self.notice = notice
        self.cache = Cache(root / STATE_DIR / CACHE_DIR, notice)
        self.runs = RunCache(self.cache.dir, notice, deferred=building)
        # (A build's: the records `remember` was given, for `close_runs`.)
        self._remembered: list[tuple[StageId, StageRecord]] | None = [] if building else None
        self._lock_copies: dict[str, lockfile.Records] = {}  # pipeline dir -> its lockfile's copy, once read
        self.settings = settings = config.load_or_default(root, notice) if building else config.load(root)
        self.mode = Mode(settings.checkout)
        self.cache.wants_reflinks = self.mode is Mode.REFLINK

    def close(self) -> None:
        """The build is over: what it stored is indexed (Cache.close).  An index
        that cannot be written costs nothing but time: the next build reads
        the pack itself (see pack.py).  A build's run-cache entries are
        `close_runs`'s."""
        if self._remembered is None:
            self.close_runs()
        try:
            self.cache.close()
        except OSError as exc:
            self.notice(f"could not index the objects this build cached ({exc.strerror or exc}); the next build will")

    def close_runs(self, *, create: bool = True) -> None:
        """A build's run-cache entries (what `remember` was given) made and
        appended, one write a log: when the build is over, and in a build
        server once its client has the answer (Engine._run).  Entries lost
        before this (a killed build or server) only cost a restore: each
        stage's last record is in its lockfile, its outputs in the cache.

        A server's, after its answer, are made without `create`: appended
        only to logs that exist, and no directory made, for a script may
        be removing the project right after its last build (its `rm -rf`
        would fail on a file made meanwhile, or leave `.pivot/` behind).
        The entries whose logs do not exist yet (a project's first builds)
        are made before the answer: `close_new_runs`."""
        remembered = self._remembered or []
        if self._remembered is not None:
            self._remembered = []
        try:
            for sid, record in remembered:
                self.runs.record(sid, record.fingerprint, record.deps, record.outs, create=create)
            self.runs.flush(create=create)
        except OSError as exc:
            self.notice(f"could not record this build's runs in the run cache ({exc.strerror or exc})")

    def close_new_runs(self) -> None:
        """Of a build's run-cache entries, make and append those whose logs
        do not exist yet (creating them), leaving the others to `close_runs`:
        a server's, before its answer (see `close_runs`)."""
        remembered = self._remembered
        if not remembered:
            return
        new: list[tuple[StageId, StageRecord]] = []
        old: list[tuple[StageId, StageRecord]] = []
        for entry in remembered:
            (old if self.runs.logged(entry[0]) else new).append(entry)
        if not new:
            return
        self._remembered = new
        try:
            self.close_runs()
        finally:
            self._remembered = old

    def keep(self, stage: Stage, inputs: StageRecord, statcache: StatCache) -> None:
        """Store the cacheable outputs of `stage` (as `inputs.outs` records them) and
        remember them in the run cache under its fingerprint and dep hashes."""
        outs = inputs.outs
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
            self.runs.record(stage.id, inputs.fingerprint, inputs.deps, outs)

    def capture(
        self,
        stage: Stage,
        known: Mapping[str, StatEntry],
        store: bool,
        *,
        defer: bool = False,
        stats: list[os.stat_result | None] | None = None,
        linked: list[tuple[str, str, Stamp]] | None = None,
    ) -> Captured:
        """Hash a finished stage's outputs and, with `store`, put the cacheable
        ones in the cache, reading each file once (hashing as it is copied).
        With `defer`, files that would be copied are only hashed, and listed in
        `Captured.deferred` for `store_deferred` to copy later, off the path
        of the stages waiting for this one (a small one whose read proved
        its stamp with the bytes read, `Captured.contents`: no second read);
        every other file read here is listed in `Captured.confirm`, for that
        later read to prove its stat-cache entry (a just-written file's is
        racy until then), unless
        the read here proved it (`Captured.proven`: a link, or a read that
        waited for a write under way, `stamps.hash_proving`).  A file
        whose stamp matches a trusted entry of `known` (the stage's stat
        cache) is not read again.  `stats`: each output's stat (None:
        missing), if the caller took them as the stage ended.  `linked` gets
        the outputs that became their cache objects, even when this raises
        (a full disk half way: stagework.capture hands them on).
        Safe in a worker thread: it only reads `known`; the stat cache
        updates come back in `Captured.seen`."""
        reads = _Reads(defer, self.mode.copies)
        if stats is None:
            stats = output_stats(self.root, stage)
        missing = tuple(o.path for o, st in zip(stage.outs, stats, strict=True) if st is None) if None in stats else ()
        if missing:
            return Captured(tuple(FileRecord(o.path, ABSENT, "") for o in stage.outs), (), missing, stored=False)
        outs: list[FileRecord] = []
        stored = store and bool(stage.outs)
        try:
            for out, st in zip(stage.outs, stats, strict=True):
                assert st is not None
                keep = store and out.cache
                stored = stored and keep
                # In hardlink mode the workspace copy may become the object itself,
                # unless the stage writes into it in place next time.
                link = keep and self.mode is Mode.HARDLINK and not (out.persist or out.incremental)
                full = joined(self.root, out.path)
                if stat.S_ISDIR(st.st_mode):
                    entries = []
                    for rel, kind, fst in walk_dir(full):
                        path = os.path.join(full, rel)
                        if kind == ENTRY_LINK:
                            digest = link_hash(path)
                            if keep:
                                self.cache.store_bytes(os.fsencode(os.readlink(path)))
                        else:
                            digest = self._file(path, fst, known, keep, link=link, reads=reads)
                        entries.append(ManifestEntry(rel, kind, digest))
                    manifest = manifest_bytes(entries)
                    outs.append(FileRecord(out.path, DIR, hash_bytes(manifest)))
                    if keep:
                        self.cache.store_bytes(manifest)
                else:
                    digest = self._file(full, st, known, keep, link=link, reads=reads)
                    outs.append(FileRecord(out.path, FILE, digest, executable=bool(st.st_mode & 0o111)))
        finally:
            if linked is not None:
                linked.extend(reads.linked)
        return Captured(
            tuple(outs),
            tuple(reads.seen),
            (),
            stored=stored,
            deferred=tuple(reads.deferred or ()),
            confirm=tuple(reads.confirm or ()),
            read_ns=reads.read_ns,
            proven=frozenset(reads.proven) if reads.proven else _NONE,
            linked=tuple(reads.linked) if reads.linked else (),
            contents=reads.contents or _NO_CONTENTS,
        )

    def _file(
        self,
        path: str,
        st: os.stat_result,
        known: Mapping[str, StatEntry],
        keep: bool,
        *,
        link: bool,
        reads: _Reads,
    ) -> str:
        """Hash one file (`st`: its stat, taken before the reads began), storing
        it as `capture` says.  The file and its stamp go to `reads.seen`; to
        `reads.confirm` to read again once past its racy window, unless hard
        linking it proved its stamp (`reads.proven`); and to `reads.linked` if
        it became its cache object."""
        entry = known.get(path)
        if entry is not None and entry.matches(st) and (not keep or self.cache.has(entry.hash)):
            return entry.hash
        if link and _linkable(path):
            linked = self.cache.ingest_by_link(path)
            digest = linked.digest
            reads.seen.append((path, linked.stat, digest))
            if linked.proven:
                reads.proven.append(path)
            elif reads.confirm is not None:
                reads.confirm.append((path, digest))
            if linked.is_object:
                reads.linked.append((path, digest, stamp(linked.stat)))
            return digest
        proven = False
        if keep and reads.deferred is None:
            digest = self.cache.ingest(path)
        else:
            deferred = reads.deferred if keep else None
            digest, proven, data = read_proving(path, st, PACK_MAX if deferred is not None else 0)
            if proven:
                reads.proven.append(path)
            # (A small file read whole is to be packed: the packs' index alone says
            # whether the cache has it, with no look for a loose object, which only
            # a fetch or a link makes; packing such a one too costs a few bytes.)
            if deferred is not None and (
                digest not in self.cache.packs if data is not None else not self.cache.has(digest)
            ):
                deferred.append((path, digest))  # (copied later)
                if data is not None:  # (its read proved it: copied from these bytes, not read again)
                    reads.contents[path] = data
                reads.seen.append((path, st, digest))
                return digest
        reads.seen.append((path, st, digest))
        if reads.confirm is not None and not proven:
            reads.confirm.append((path, digest))
        return digest

    def store_deferred(
        self,
        files: Iterable[tuple[str, str]],
        confirmed: Callable[[str, os.stat_result, str], None],
        pause: Callable[[float], object] = time.sleep,
        *,
        copy: bool = True,
        dropped: Callable[[str], object] = lambda _digest: None,
        contents: Mapping[str, bytes] = _NO_CONTENTS,
    ) -> list[str]:
        """Copy files `capture` deferred into the cache (with `copy` false, only
        read them again: `Captured.confirm`); returns those that no longer hash
        as they did (changed since: stored as they are now, but the run cache
        must not name them).  A file in `contents` (`Captured.contents`: read
        by a read that proved its stamp) is stored from those bytes, as it
        was hashed, and neither read nor statted again.  A file read again
        only (not `copy`) that no longer hashes as it did and was its object
        (hardlink mode) takes the object with it: `dropped` gets its hash.
        Raises OSError (a full disk).

        The copy reads each file whole once more: when that read began after
        the file's racy window and its stamp held throughout, `confirmed` gets
        (path, stat, hash), for the stat cache to trust its entry now.  To make
        that the rule, a file written moments ago is copied once its window
        (`stamps.window_ns`: at most 50 ms) has passed, waiting with `pause(seconds)` (the storer's pause
        ends early when the build is over: then the end of the build settles
        what is left, in one wait).  A file whose read can wait for a write
        under way (`stamps.read_proves`) is not waited for: capture's read
        proved it already, and one only read again here proves it by that
        read (`stamps.hash_proving`)."""
        changed = []
        for path, digest in files:
            data = contents.get(path) if contents else None
            if data is not None:  # read as its stage ended, by a read that proved its stamp (`capture`)
                self.cache.store_bytes(data)
                continue
            try:
                before = os.stat(path)
                waits = read_proves(before)  # (the read waits for a write under way: no window to wait out)
                if not waits and (wait_ns := racy_wait_ns(before, time.time_ns())):
                    pause(wait_ns / 1e9)
                    before = os.stat(path)  # as it is after the wait
            except FileNotFoundError:
                if copy:
                    raise
                continue  # gone (a later stage removed it, even while it settled): the end of the build forgets it
            started = time.time_ns()
            if not copy and not waits and is_racy(before, started):
                continue  # the build is ending: its settling reads it, once
            try:
                if copy:  # (not a read that waits: its proof is capture's, or the window's)
                    actual, proves = self.cache.ingest(path, before.st_size), False
                else:
                    actual, proves = hash_proving(path, before)
            except FileNotFoundError:
                if copy:
                    raise
                continue
            if actual != digest:
                changed.append(path)
                if not copy and self.cache.forget_link(path, digest):
                    dropped(digest)
            elif (proves or not is_racy(before, started)) and _same_stamp(path, before):
                confirmed(path, before, digest)
        return changed

    def remember(self, stage: Stage, record: StageRecord) -> None:
        """Note in the run cache that `record.outs` came from `record`'s inputs
        (in a build, when it is over: `close_runs`)."""
        if self._remembered is not None:
            self._remembered.append((stage.id, record))  # (the storer's threads too: one append)
        else:
            self.runs.record(stage.id, record.fingerprint, record.deps, record.outs)

    def restore(self, stage: Stage, snap: Snapshot, record: StageRecord | None) -> tuple[FileRecord, ...] | None:
        """Check out the outputs this stage made from these same inputs before, if
        the cache holds them all; returns their records, or None (the stage runs)."""
        if not stage.outs or not all(map(_cache, stage.outs)):
            return None
        outs = self._newest(stage, snap, record)
        if outs is None:
            return None
        try:
            for out, rec in zip(stage.outs, outs, strict=True):
                self._check_out(rec, self.root / out.path, self.mode_for(out))
        except CorruptObject as exc:
            self.notice(f"cache object {exc} was corrupt and has been removed; {stage.id.label()} will run")
            return None
        except MissingObject:
            return None
        return outs

    def _newest(self, stage: Stage, snap: Snapshot, record: StageRecord | None) -> tuple[FileRecord, ...] | None:
        """The newest outputs recorded for exactly these inputs that the cache can
        check out: the lockfile's record, then the cache's copy of the last
        lockfile (this one may be damaged, lost, or put back by git), then the
        run cache's older records."""

        found = self._usable(stage, snap, record) or self._usable(stage, snap, self._copied_record(stage))
        if found is None:
            found = self.runs.lookup(stage.id, snap.fingerprint, snap.deps)
            if found is not None and not self.restorable(stage, found):
                found = None
        return found

    def _usable(self, stage: Stage, snap: Snapshot, r: StageRecord | None) -> tuple[FileRecord, ...] | None:
        """`r`'s outputs, if `r` was recorded for these inputs and the cache can check them out."""
        return r.outs if r is not None and _same_inputs(r, snap) and self.restorable(stage, r.outs) else None

    def recorded(self, stage: Stage, snap: Snapshot, record: StageRecord | None) -> tuple[FileRecord, ...] | None:
        """The outputs `record` (the lockfile's) holds for exactly these inputs,
        wherever their objects are now (--no-checkout looks for them on the
        remote: build/elsewhere.py); None if it holds none."""
        if record is None or not stage.outs or not _same_inputs(record, snap):
            return None
        if [o.path for o in record.outs] != [o.path for o in stage.outs] or not all(o.cache for o in stage.outs):
            return None
        return record.outs if all(o.kind in (FILE, DIR) for o in record.outs) else None

    def restorable(self, stage: Stage, outs: tuple[FileRecord, ...]) -> bool:
        """Could these recorded outputs of `stage` be checked out: every declared
        output cached, and each of these a file or directory the cache holds."""
        return (
            bool(outs)
            and all(o.cache for o in stage.outs)
            and [o.path for o in outs] == [o.path for o in stage.outs]
            and all(o.kind in (FILE, DIR) and self.cache.has(o.hash) for o in outs)
        )

    def displaced(self, stage: Stage, old: StageRecord | None, new: StageRecord) -> StageRecord | None:
        """`old`, the lockfile record `new` replaces, if the run cache should
        keep it: other inputs, and outputs all cacheable and in the cache.

        The run cache holds what the lockfile no longer does: the lockfile's
        record answers for the current inputs (see `restore`), so an entry is
        written when a new result pushes a record out (and `push` writes those
        of the records it sends).  A clean build so creates no entry, where it
        used to create a file per stage."""
        if old is None or (old.fingerprint == new.fingerprint and old.deps == new.deps):
            return None
        return old if self.restorable(stage, old.outs) else None

    def _copied_record(self, stage: Stage) -> StageRecord | None:
        """The stage's record in the cache's copy of its pipeline's last lockfile
        (StateStore keeps it), where that copy differs from the lockfile now
        (else it has nothing to add: it is not even decoded)."""
        pipeline = stage.id.pipeline
        copy = self._lock_copies.get(pipeline)
        if copy is None:
            copy = self._lock_copies[pipeline] = self._read_copy(pipeline)
        try:
            return copy.get(stage.name)
        except lockfile.LockfileError:
            return None

    def _read_copy(self, pipeline: str) -> lockfile.Records:
        try:
            blob = lockfile.copy_path(self.root, pipeline).read_bytes()
        except OSError:
            return lockfile.Records()
        try:
            if (self.root / pipeline / LOCKFILE).read_bytes() == blob:
                return lockfile.Records()
        except OSError:
            pass
        try:
            return lockfile.decode_records(blob)
        except lockfile.LockfileError:
            return lockfile.Records()

    def roll_back(self, stage: Stage, record: StageRecord | None) -> tuple[list[str], list[str]]:
        """After a failure: put each output back to its last recorded version from
        the cache, or remove it if there is none, so the workspace matches the
        lockfile again.  (A `persist` output that is not cached is left alone.)
        Returns (restored paths, removed paths)."""
        recorded = {o.path: o for o in record.outs} if record else {}
        restored: list[str] = []
        removed: list[str] = []
        for out in stage.outs:
            path = self.root / out.path
            rec = recorded.get(out.path)
            if rec is not None and out.cache and rec.kind in (FILE, DIR) and self.cache.has(rec.hash):
                try:
                    self._check_out(rec, path, self.mode_for(out))
                    restored.append(out.path)
                    continue
                except (CorruptObject, MissingObject):
                    pass
            if out.persist and not out.cache:
                continue
            if _remove(path):
                removed.append(out.path)
        return restored, removed

    def restore_incremental(self, stage: Stage, record: StageRecord | None) -> None:
        """Before an `incremental` stage runs, put its outputs back to their last
        recorded version, so it builds on what the lockfile says it made."""
        if record is None:
            return
        recorded = {o.path: o for o in record.outs}
        for out in stage.outs:
            rec = recorded.get(out.path)
            if not out.incremental or rec is None or rec.kind not in (FILE, DIR) or not self.cache.has(rec.hash):
                continue
            with contextlib.suppress(CorruptObject, MissingObject):
                self._check_out(rec, self.root / out.path, Mode.COPY)

    def mode_for(self, out: Out) -> Mode:
        """The configured mode, except that outputs a stage writes into again
        (`persist`, `incremental`) are always real copies."""
        return Mode.COPY if (out.persist or out.incremental) and not self.mode.copies else self.mode

    def _check_out(self, rec: FileRecord, dest: Path, mode: Mode) -> None:
        if rec.kind == DIR:
            self.cache.checkout_dir(rec.hash, dest, mode)
        else:
            self.cache.checkout_file(rec.hash, dest, mode, rec.executable)


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)
        return True
    if path.exists() or path.is_symlink():
        path.unlink()
        return True
    return False


def _same_stamp(path: str, before: os.stat_result) -> bool:
    try:
        return stamp(os.stat(path)) == stamp(before)
    except OSError:
        return False


def _linkable(path: str) -> bool:
    """Whether hardlink mode may make this output the cache's object itself: a
    regular file (not a symlink, whose link would be the link), not executable
    (an object has no execute bit; see Cache.checkout_file), and no other
    name's (a stage that hard-links a source as its output must not have the
    source made read-only and turned into an object)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and not st.st_mode & 0o111


def _same_inputs(record: StageRecord, snap: Snapshot) -> bool:
    mine = [(d.path, d.kind, d.hash) for d in snap.deps]
    theirs = [(d.path, d.kind, d.hash) for d in record.deps]
    return record.fingerprint == snap.fingerprint and mine == theirs and all(o.kind != ABSENT for o in record.outs)
