"""Packs: the cache's small objects, many to a file.

A cache object is a file of its own when it is large; a small one (up to
`PACK_MAX`) is a record in a pack, because creating a file is what a small
object costs: here 0.15 to 0.8 ms of kernel time each (inode, directory
entry, journal), more than everything else pivotbuild does for a stage that
writes three lines.  A build appends the small objects it stores to one pack
of its own, `packs/PID-RANDOM.pack`, and indexes it when it ends
(`PID-RANDOM.idx`, written atomically).

A pack is a header, then records: the object's XXH3-128 (16 bytes), its
length (4 bytes, little-endian), its bytes.  So a pack is readable without
its index: a build that was killed before it wrote one has its pack scanned
(up to a torn last record) by the next reader, which writes the index when
the writer is gone.  Nothing here is trusted for content: every object read
back is verified against its name by the cache, as a file object is.

An index is a header, the number of entries, the entries sorted by digest
(digest, offset, length) and the XXH3-64 of all that; one that does not check
is ignored and the pack scanned again.  Packs are only ever written whole
under a new name: merging (when a build leaves more than `MAX_PACKS`) and
dropping objects (gc; a corrupt object) write a new pack with what stays,
then remove the old ones.  A reader lists the directory again after reading
the packs, until nothing changed meanwhile (a merge renames its pack in, then
removes the old ones); one that finds a pack gone later reads the directory
again, once.  A build's own pack is created under a temporary name and
renamed into place once locked, so no other process ever finds it unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from itertools import repeat
from pathlib import Path

import xxhash

from pivotbuild.cache.copying import write_all
from pivotbuild.state.files import write_atomic

PACKS = "packs"
PACK_MAX = 64 * 1024  # objects up to this size are packed
MAX_PACKS = 16  # a build that leaves more merges all but the largest into one
_READ_WHOLE = 8 << 20  # a rewrite reads a pack up to this size in one read, not an object at a time
_WRITE_EVERY = 1 << 20  # and writes the new pack this much at a time

_PACK_MAGIC = b"PVPACK1\n"
_IDX_MAGIC = b"PVIDX1\n\0"
_RECORD = struct.Struct("<16sI")  # an object's digest, its length; its bytes follow
_ENTRY = struct.Struct("<16sQI")  # digest, offset of the bytes, length
_COUNT = struct.Struct("<I")
_CHECK = struct.Struct("<Q")


class Packs:
    """The packs of one cache: what they hold, and this process's own pack.

    Thread-safe: a build's storer threads and its loop store into it at once."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()
        self._where: dict[str, tuple[str, int, int]] | None = None  # digest -> (pack name, offset, length)
        self._fds: dict[str, int] = {}
        self._own: str | None = None  # the name of the pack this process appends to
        self._own_fd = -1
        self._own_size = 0
        self._own_entries: dict[str, tuple[int, int]] = {}

    # -- reading ------------------------------------------------------------------------

    def __contains__(self, digest: str) -> bool:
        return digest in self._index()

    def read(self, digest: str) -> bytes | None:
        """The bytes recorded for `digest` (unverified), or None if no pack holds it."""
        for attempt in (0, 1):
            where = self._index().get(digest)
            if where is None:
                return None
            name, offset, length = where
            try:
                return self._pread(name, offset, length)
            except FileNotFoundError:
                if attempt:
                    return None
                self.reload()  # merged or rewritten by another process since
        return None

    def sizes(self) -> dict[str, int]:
        """Each packed object's digest and length (gc)."""
        return {digest: length for digest, (_, _, length) in self._index().items()}

    def reload(self) -> None:
        """Forget what was read of the directory (another process changed it).
        The packs already open stay open: a name is never reused, so what a
        descriptor reads stays right, and another thread may be reading."""
        with self._lock:
            self._where = None

    def _index(self) -> dict[str, tuple[str, int, int]]:
        where = self._where
        if where is None:
            with self._lock:
                where = self._where
                if where is None:
                    where = self._where = self._load()
        return where

    def _load(self) -> dict[str, tuple[str, int, int]]:
        """What the packs hold.  The directory is listed again after the packs
        are read, until it did not change meanwhile: a merge by another process
        can rename its new pack in after one listing and remove an old one
        before it is read, and what they hold would be missing until a reload.

        What this process read last of this cache is taken as it was, while
        those packs are there with the same indexes (a build server's next
        build reads only the packs written since: its last build's, one)."""
        names = set(_pack_names(self.dir))
        while True:
            before = _stamps_of(self.dir, names)
            known = _read_packs.get(str(self.dir))
            if known is not None and known[0] <= names and all(before[n] == known[1][n] for n in known[0]):
                base, where = known[0], dict(known[2])
            else:
                base, where = set(), {}
            for name in sorted(names - base):
                found = (
                    [(d, o, n) for d, (o, n) in self._own_entries.items()] if name == self._own else self._entries(name)
                )
                columns = tuple(zip(*found, strict=True))  # (digests, offsets, lengths), made in C
                if columns:  # (a later pack's entry for a digest wins: either holds the same bytes)
                    digests, offsets, lengths = columns
                    where.update(zip(digests, zip(repeat(name), offsets, lengths, strict=False), strict=True))
            again = set(_pack_names(self.dir))
            if again == names:
                break
            names = again
        # Kept only if every pack had its index before it was read, and still
        # has that one (a pack scanned while its writer went on is not).
        if None not in before.values() and self._own not in names and _stamps_of(self.dir, names) == before:
            if len(_read_packs) >= MAX_PACKS:
                _read_packs.clear()
            _read_packs[str(self.dir)] = (names, before, dict(where))
        return where

    def _entries(self, name: str) -> list[tuple[str, int, int]]:
        """A pack's entries, from its index, or by scanning it (then indexing
        it if its writer is gone: killed before it could)."""
        idx = self.dir / (name[: -len(".pack")] + ".idx")
        entries = _indexed(idx)
        if entries is not None:
            return entries
        try:
            fd = os.open(self.dir / name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return []
        try:
            # Whole if no writer holds its lock; and this shared lock, held until
            # the index is written, keeps any writer from finishing meanwhile
            # (a scan taken before a writer's last record, written after its own
            # index, would hide that record from every reader).
            whole = _try_lock(fd, fcntl.LOCK_SH)
            try:
                entries = _scan(self.dir / name)
            except OSError:
                return []
            if whole:
                with contextlib.suppress(OSError):
                    write_atomic(idx, _index_bytes(entries), fsync=False)
        finally:
            os.close(fd)
        return entries

    def _pread(self, name: str, offset: int, length: int) -> bytes:
        fd = self._fds.get(name)
        if fd is None:
            fd = os.open(self.dir / name, os.O_RDONLY | os.O_CLOEXEC)
            with self._lock:
                if name in self._fds:
                    os.close(fd)
                    fd = self._fds[name]
                else:
                    self._fds[name] = fd
        data = os.pread(fd, length, offset)
        return data if len(data) == length else b""  # short: the cache's check reports it corrupt

    # -- writing --------------------------------------------------------------------------

    def add(self, digest: str, data: bytes) -> None:
        """Append object `digest` (`data`, at most PACK_MAX bytes) to this
        process's pack, unless a pack holds it already."""
        self._index()  # (read outside the lock: `_index` takes it)
        with self._lock:
            # The current dict, not the one `_index` returned: another thread
            # may have reloaded it since.  None (reloaded, not read again yet):
            # the next `_load` takes this pack's entries from `_own_entries`.
            where = self._where
            if where is not None and digest in where:
                return
            if self._own is None:
                self._start()
            offset = self._own_size + _RECORD.size
            try:
                write_all(self._own_fd, _RECORD.pack(bytes.fromhex(digest), len(data)) + data)
            except OSError:
                self._cut_back()
                raise
            self._own_size = offset + len(data)
            self._own_entries[digest] = (offset, len(data))
            if where is not None:
                assert self._own is not None
                where[digest] = (self._own, offset, len(data))

    def _start(self) -> None:
        """Open a new pack to append to, locked before it has its name: under
        its name unlocked, a merge in another process would take it (empty),
        and remove it, and a reader could index it empty."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{os.urandom(6).hex()}.pack"
        tmp = self.dir / f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"  # (`_pack_names` skips it)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        try:
            # Locked for as long as it is written: no other process indexes it,
            # or merges or rewrites it away, meanwhile (see `_try_lock`).  The
            # lock is the open file's: it stays through the rename.
            fcntl.flock(fd, fcntl.LOCK_EX)
            write_all(fd, _PACK_MAGIC)
            os.replace(tmp, self.dir / name)  # (a name is never reused: pid and 48 random bits)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._own, self._own_fd, self._own_size = name, fd, len(_PACK_MAGIC)
        self._own_entries = {}

    def _cut_back(self) -> None:
        """A record was not written whole (a full disk): cut it off, so the
        pack stays records end to end; if even that fails, the pack is left
        as it is (a scan reads up to the torn record) and the next object
        starts another.  Called holding the lock."""
        try:
            os.ftruncate(self._own_fd, self._own_size)
            os.lseek(self._own_fd, self._own_size, os.SEEK_SET)
        except OSError:
            os.close(self._own_fd)
            self._own, self._own_fd, self._own_entries = None, -1, {}

    def close(self) -> None:
        """The end of a build or fetch: index this process's pack (the next
        build can read it without a scan), merge the packs if there are more
        than MAX_PACKS, and close what was opened to read.  Idempotent; the
        next `add` starts a new pack."""
        wrote = self._index_own()
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        if not wrote:
            return
        names = list(_pack_names(self.dir))
        if len(names) > MAX_PACKS:
            sizes = {n: _size(self.dir / n) for n in names}
            largest = max(names, key=lambda n: (sizes[n], n))
            self.rewrite([n for n in names if n != largest], drop=frozenset())

    def _index_own(self) -> bool:
        """Index this process's pack, and stop writing it; whether there was one."""
        with self._lock:
            name, fd, entries = self._own, self._own_fd, self._own_entries
            self._own, self._own_fd, self._own_entries = None, -1, {}
        if name is None:
            return False
        try:
            write_atomic(
                self.dir / (name[: -len(".pack")] + ".idx"),
                _index_bytes([(d, o, n) for d, (o, n) in entries.items()]),
                fsync=False,
            )
        finally:
            os.close(fd)  # (and with it the lock: the pack is whole)
        return True

    def drop(self, digests: Iterable[str]) -> int:
        """Remove these objects from the packs that hold them (written again
        without them); returns the bytes freed."""
        gone = frozenset(digests)
        where = self._index()
        holding = sorted({where[d][0] for d in gone if d in where})
        freed = sum(where[d][2] for d in gone if d in where)
        if holding:
            self.rewrite(holding, drop=gone)
        return freed

    def rewrite(self, names: list[str], *, drop: frozenset[str]) -> None:
        """Replace packs `names` by one holding their objects less `drop`
        (none at all if nothing stays), copied record by record: a pack of up
        to 8 MiB read whole, a larger one an object at a time, and the new
        one written a MiB at a time (a system call per object made a merge of
        sixteen builds' packs of 55 objects 880 reads and 880 writes).  A
        pack another process is writing (or rewriting) is left alone: each is
        locked while it is.  The new pack, its index and the
        directory are on disk before the old ones go, so a crash, even a
        power cut, leaves duplicates, never a loss."""
        if self._own in names:  # this process's open pack: index it first
            self._index_own()
        name = f"{os.getpid()}-{os.urandom(6).hex()}.pack"
        tmp = self.dir / f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        entries: dict[str, tuple[int, int]] = {}
        locked: list[tuple[str, int]] = []  # the old packs taken, locked until they are gone
        pending: list[bytes] = [_PACK_MAGIC]  # (written when a MiB is due, and at the end)
        due = offset = len(_PACK_MAGIC)
        try:
            for old in names:
                try:
                    src = os.open(self.dir / old, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # rewritten by another process meanwhile: its successor holds these
                try:
                    fcntl.flock(src, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(src)
                    continue  # being written, or rewritten by another: left as it is
                locked.append((old, src))
                st = os.fstat(src)
                if st.st_nlink == 0:
                    continue  # rewritten by another just before: it unlinks before it unlocks
                whole = os.pread(src, st.st_size, 0) if st.st_size <= _READ_WHOLE else None  # (locked: no writer)
                for digest, start, length in self._entries(old):
                    if digest in drop or digest in entries:
                        continue
                    data = whole[start : start + length] if whole is not None else os.pread(src, length, start)
                    if len(data) != length:
                        break  # cut short: what follows is lost to every reader alike
                    pending += (_RECORD.pack(bytes.fromhex(digest), length), data)
                    entries[digest] = (offset + _RECORD.size, length)
                    offset += _RECORD.size + length
                    if offset - due >= _WRITE_EVERY:
                        write_all(out, b"".join(pending))
                        pending.clear()
                        due = offset
            write_all(out, b"".join(pending))
            os.fsync(out)
            os.close(out)
            out = -1
            if entries:
                os.replace(tmp, self.dir / name)
                write_atomic(
                    self.dir / (name[: -len(".pack")] + ".idx"),
                    _index_bytes([(d, o, n) for d, (o, n) in entries.items()]),
                )  # (fsync'ed, with the directory: the rename above too)
            for old, _ in locked:
                for path in (self.dir / (old[: -len(".pack")] + ".idx"), self.dir / old):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        finally:
            if out >= 0:
                os.close(out)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            for _, fd in locked:
                os.close(fd)
        self.reload()


# The indexes read in this process, by path: their stamp (inode, size,
# mtime) and entries.  An index is written once, whole, under a new name, and
# never changed, so one read before is read again only if something else now
# has its name: a build server, which builds again and again, reads only the
# indexes of the packs written since its last build.
_read_indexes: dict[str, tuple[tuple[int, int, int], list[tuple[str, int, int]]]] = {}
_READ_INDEXES_MAX = 4 * MAX_PACKS
# And what the packs of a cache held, by its directory: the packs' names, the
# stamps of their indexes, and the digests' places (copied out, as `add`
# writes into its own).  Taken while the same packs have the same indexes.
_read_packs: dict[str, tuple[set[str], dict[str, tuple[int, int, int] | None], dict[str, tuple[str, int, int]]]] = {}


def _stamps_of(directory: Path, names: set[str]) -> dict[str, tuple[int, int, int] | None]:
    """The stamp of the index of each of the packs `names`; None for one with none."""
    found: dict[str, tuple[int, int, int] | None] = {}
    for name in names:
        try:
            st = os.stat(directory / (name[: -len(".pack")] + ".idx"))
        except OSError:
            found[name] = None
        else:
            found[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _indexed(idx: Path) -> list[tuple[str, int, int]] | None:
    """The entries of the pack index `idx`; None if it cannot be read or is not one."""
    key = str(idx)
    try:
        st = os.stat(key)
    except OSError:
        return None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    known = _read_indexes.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    try:
        with open(key, "rb") as f:
            blob = f.read()
        entries = _parse_index(blob)
    except (OSError, ValueError):
        return None
    if len(blob) == st.st_size:  # (else replaced while read: not kept)
        if len(_read_indexes) >= _READ_INDEXES_MAX:
            _read_indexes.clear()
        _read_indexes[key] = (stamp, entries)
    return entries


def _pack_names(directory: Path) -> Iterator[str]:
    try:
        names = os.listdir(directory)
    except OSError:  # none yet; or something else where the directory should be (storing then warns)
        return
    for name in names:
        if name.endswith(".pack") and not name.startswith("."):
            yield name


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _try_lock(fd: int, kind: int) -> bool:
    """Lock the pack open as `fd` without waiting; False if a process is
    writing (or rewriting) it: its writer holds an exclusive lock on it until
    it is whole (the kernel lets go of a killed one's)."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _index_bytes(entries: list[tuple[str, int, int]]) -> bytes:
    body = b"".join(
        [_IDX_MAGIC, _COUNT.pack(len(entries))] + [_ENTRY.pack(bytes.fromhex(d), o, n) for d, o, n in sorted(entries)]
    )
    return body + _CHECK.pack(xxhash.xxh3_64_intdigest(body))


def _parse_index(blob: bytes) -> list[tuple[str, int, int]]:
    """An index's entries; ValueError if it is not one, or not whole."""
    head = len(_IDX_MAGIC) + _COUNT.size
    if len(blob) < head + _CHECK.size or not blob.startswith(_IDX_MAGIC):
        raise ValueError("not a pack index")
    (count,) = _COUNT.unpack_from(blob, len(_IDX_MAGIC))
    if len(blob) != head + count * _ENTRY.size + _CHECK.size:
        raise ValueError("a pack index of the wrong size")
    (check,) = _CHECK.unpack_from(blob, len(blob) - _CHECK.size)
    if check != xxhash.xxh3_64_intdigest(memoryview(blob)[: len(blob) - _CHECK.size]):
        raise ValueError("a damaged pack index")
    columns = tuple(zip(*_ENTRY.iter_unpack(memoryview(blob)[head : len(blob) - _CHECK.size]), strict=True))
    if not columns:
        return []
    digests, offsets, lengths = columns  # (in C: a 1,000-object pack's index is read by every build that stores)
    return list(zip(map(bytes.hex, digests), offsets, lengths, strict=True))


def _scan(path: Path) -> list[tuple[str, int, int]]:
    """The records of a pack read from the pack itself, up to the first one
    that is not whole (a writer killed mid-record)."""
    entries: list[tuple[str, int, int]] = []
    with open(path, "rb") as f:
        if f.read(len(_PACK_MAGIC)) != _PACK_MAGIC:
            return entries
        size = os.fstat(f.fileno()).st_size
        offset = len(_PACK_MAGIC)
        while offset + _RECORD.size <= size:
            f.seek(offset)
            raw, length = _RECORD.unpack(f.read(_RECORD.size))
            start = offset + _RECORD.size
            if length > PACK_MAX or start + length > size:
                break
            entries.append((raw.hex(), start, length))
            offset = start + length
    return entries
