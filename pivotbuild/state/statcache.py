"""The stat cache: path -> (size, mtime_ns, inode, ctime_ns) -> content hash.

A file whose stat matches its entry is not read again; that is what lets a
no-op build read no file contents.  An entry recorded within the filesystem's
timestamp granularity of the file's last change is "racy" (the file could
change again in the same clock tick without its stat changing, the case git
calls racy-git), so it is kept but not trusted: the next build rehashes it once.

File: frames one after the other (`state.framing`: magic `PIVSTAT\n`,
version FORMAT, checksum), each msgpack `[rows, dropped]`: rows `[path,
size, mtime_ns, ino, ctime_ns, hash, trusted]`, and the paths whose entries
went.  The first frame is the whole cache; each later one is what a build
changed, appended as it saves (one `write` and an fsync), so a build that
hashed a few files writes a few rows, not the project's thousands.  Once
the appended rows outnumber half the entries, the save writes the whole
cache again, atomically, as one frame.  Without the checksum a flipped bit
would be believed (a wrong hash for an unchanged stamp).  A damaged frame is
reported (`damaged`): what the frames before it say is kept (each is whole
and checked, and a stamp it records is still compared with the file), the
rest is dropped, which costs only rehashing, and the next save writes the
whole cache.  A first frame of another format version drops the file
without a word.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple
from functools import partial
from operator import itemgetter
from pathlib import Path

from pivotbuild.state import framing
from pivotbuild.state.files import append_whole, write_atomic
from pivotbuild.state.hashing import (
    ENTRY_LINK,
    ManifestEntry,
    hash_bytes,
    link_hash,
    manifest_bytes,
    walk_dir,
)
from pivotbuild.state.stamps import hash_proving, racy_wait_ns, read_proves
from pivotbuild.state.stamps import is_racy as _is_racy

MAGIC = b"PIVSTAT\n"
FORMAT = 4  # 2: with a checksum; 3: in a `state.framing` frame; 4: frames of [rows, dropped]
FRAME = framing.Format(MAGIC, FORMAT, "stat cache")
_FORMAT_1 = b"\x92\x01"  # msgpack [1, ...]: written before the checksum, dropped without a warning


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _StatEntry(NamedTuple):
        size: int
        mtime_ns: int
        ino: int
        ctime_ns: int
        hash: str
        trusted: bool

else:  # (typing's NamedTuple makes the same: a build does not import typing, 2 to 3 ms)
    _StatEntry = namedtuple("StatEntry", ("size", "mtime_ns", "ino", "ctime_ns", "hash", "trusted"))


class StatEntry(_StatEntry):
    """A file's stamp when it was hashed, its hash, and whether the stamp alone
    proves it (not racy).  A tuple: a stat cache of 20,000 files is made of
    its rows as read, by C, not one Python call a row."""

    __slots__ = ()

    def matches(self, st: os.stat_result) -> bool:
        return self.trusted and self.same_stamp(st)

    def same_stamp(self, st: os.stat_result) -> bool:
        return (
            self.size == st.st_size
            and self.mtime_ns == st.st_mtime_ns
            and self.ino == st.st_ino
            and self.ctime_ns == st.st_ctime_ns
        )


class StatCache:
    """Hashes files through the cache.  `files_read` counts the files whose
    contents were actually read (a no-op build keeps it at zero)."""

    def __init__(self, path: Path, *, torn_is_partial: bool = False) -> None:
        """`torn_is_partial`: read without the project lock, so that a last
        frame cut short is another build's append in progress, not damage
        (the frames before it are read; nothing is saved)."""
        self.path = path
        self._torn_is_partial = torn_is_partial
        self.entries: dict[str, StatEntry] = {}
        self._racy: set[str] = set()  # the paths whose entry is not trusted (`settle` looks at these alone)
        self.files_read = 0
        # Paths hashed by this process: their entries are believed even while
        # racy, since settle() rehashes every racy entry before the build ends,
        # so a change made in the same clock tick is still seen by the next build.
        self._this_run: set[str] = set()
        self._dirty = False
        self._changed: set[str] = set()  # paths whose entry was set or dropped since the file was read or written
        self._appended = 0  # rows and dropped paths in the file's frames after its first
        self._whole = True  # the next save writes the whole cache (no usable file to append to)
        self.damaged = ""  # why the file was ignored, for one warning
        self._load()

    def _load(self) -> None:
        """A missing or damaged stat cache only costs rehashing; a damaged one is
        replaced when the build saves."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.damaged = f"cannot be read ({exc.strerror})"
            return
        if blob.startswith(_FORMAT_1):
            return
        entries: dict[str, StatEntry] = {}
        frames = appended = 0
        try:
            for payload in FRAME.frames(blob, use_list=False):
                rows, dropped = _parts(payload)
                entries.update(zip(map(_key, rows), map(_entry, map(_fields, rows)), strict=True))
                for path in dropped:
                    entries.pop(path, None)
                if frames:
                    appended += len(rows) + len(dropped)
                frames += 1
        except framing.OtherVersion:
            if not frames:
                return  # another pivotbuild's format
            self._dirty = True  # (a frame another pivotbuild appended: what came before it stands)
        except framing.Damaged as exc:
            if not frames and _earlier_layout(blob):
                return  # a whole file of the layout before the framing: dropped without a word
            if not (frames and self._torn_is_partial and framing.cut_short(blob)):
                self.damaged = str(exc)
            self._dirty = True
        except (ValueError, TypeError) as exc:
            self.damaged = f"does not decode ({type(exc).__name__})"
            self._dirty = True
        self.entries = entries
        self._racy = {key for key, entry in entries.items() if not entry.trusted}
        self._appended = appended
        self._whole = self._dirty

    def settle(self) -> None:
        """Make racy entries trustworthy now rather than at the next build: wait out
        the racy window of the newest (`stamps.window_ns`: at most 50 ms), then
        re-read each such file; one whose read proves its stamp at once
        (`stamps.read_proves`) is read again without waiting.  A change made
        since it was first hashed shows up as a new hash here, which the next
        build compares with the lockfile, so nothing is missed; and a no-op
        build right after this one reads no file contents."""
        racy = [k for k in self._racy if k in self.entries]
        if not racy:
            return
        now = time.time_ns()
        stats: dict[str, os.stat_result] = {}
        for key in racy:
            try:
                stats[key] = os.stat(key)
            except OSError:
                self.forget(key)
        wait_ns = max((racy_wait_ns(st, now) for st in stats.values() if not read_proves(st)), default=0)
        if wait_ns:
            time.sleep(wait_ns / 1e9)
            for key in list(stats):  # as they are after the wait
                try:
                    stats[key] = os.stat(key)
                except OSError:
                    del stats[key]
                    self.forget(key)
        for key, st in stats.items():
            if read_proves(st) or not _is_racy(st, time.time_ns()):
                self.entries.pop(key)
                self.file_hash(key, st)

    def begin(self) -> None:
        """Another build with this cache, after `save`: its count of files read
        starts again, and entries it hashed while racy were settled by `save`."""
        self.files_read = 0
        self._this_run.clear()

    def save(self) -> None:
        """Settle racy entries, then, if anything changed, append what did to
        the file (or write the whole cache again, atomically: see the module)."""
        self.settle()
        if not self._dirty:
            return
        entries, changed = self.entries, sorted(self._changed)
        if self._whole or self._appended + len(changed) > max(len(entries) // 2, _APPEND_AT_LEAST):
            self._write_whole()
        else:
            rows = [(k, *entries[k]) for k in changed if k in entries]
            try:
                # Not fsync'ed: a cache, whose frames a power cut cuts short
                # are dropped when read (the files they named hashed again).
                append_whole(self.path, FRAME.dump([rows, [k for k in changed if k not in entries]]), fsync=False)
            except FileNotFoundError:  # (removed since it was read)
                self._write_whole()
            else:
                self._appended += len(changed)
        self._changed.clear()
        self._dirty = False

    def _write_whole(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, FRAME.dump([[(k, *e) for k, e in sorted(self.entries.items())], []]))
        self._appended = 0
        self._whole = False

    def file_hash(self, path: str | os.PathLike[str], st: os.stat_result | None = None) -> str:
        """The content hash of a regular file (or a symlink's target text for ENTRY_LINK)."""
        key = os.fspath(path)
        st = st if st is not None else os.stat(key)
        entry = self.entries.get(key)
        if entry is not None and (entry.matches(st) or (key in self._this_run and entry.same_stamp(st))):
            return entry.hash
        read_ns = time.time_ns()
        digest, proven = hash_proving(key, st)
        self.files_read += 1
        self._record(key, st, digest, read_ns, proven)
        return digest

    def note(self, path: str, st: os.stat_result, digest: str, read_ns: int, *, proven: bool = False) -> None:
        """Record a hash computed elsewhere (a worker that read the file to store
        it) for the stamp `st` taken before reading it; `read_ns`: when that
        read began (or earlier).  `proven`: the stamp proves the hash already,
        however recent (hardlink mode's, see Cache.ingest_by_link, or a read
        that waited for a write under way: stamps.hash_proving)."""
        self.files_read += 1
        self._record(path, st, digest, read_ns, proven)

    def confirm(self, path: str, st: os.stat_result, digest: str) -> None:
        """Trust the entry for `path` if it is still (`st`, `digest`): the file was
        read again, whole, starting after its racy window had passed, and its
        stamp did not change meanwhile (so a later change would show in the
        stamp).  Saves `settle` reading it once more at the end of the build."""
        entry = self.entries.get(path)
        if entry is not None and not entry.trusted and entry.hash == digest and entry.same_stamp(st):
            self.entries[path] = StatEntry(entry.size, entry.mtime_ns, entry.ino, entry.ctime_ns, digest, True)
            self._racy.discard(path)
            self._changed.add(path)
            self._dirty = True

    def _record(self, key: str, st: os.stat_result, digest: str, read_ns: int, proven: bool = False) -> None:
        """`digest` for the stamp `st`, read from `read_ns` on.  Trusted only if
        `proven`, or the stamp was past its racy window when the read began: a
        change made in the same clock tick as the last one, while or after it
        was read, would leave the stamp as it is (judged when it is recorded
        instead, a hash read long before would pass for proof)."""
        trusted = proven or not _is_racy(st, read_ns)
        self.entries[key] = StatEntry(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest, trusted)
        if trusted:
            self._racy.discard(key)
        else:
            self._racy.add(key)
        self._this_run.add(key)
        self._changed.add(key)
        self._dirty = True

    def dir_manifest(self, path: str | os.PathLike[str]) -> list[ManifestEntry]:
        """The manifest of a directory tree, hashing each file through the cache."""
        base = os.fspath(path)
        entries = []
        for rel, kind, st in walk_dir(base):
            full = os.path.join(base, rel)
            digest = link_hash(full) if kind == ENTRY_LINK else self.file_hash(full, st)
            entries.append(ManifestEntry(rel, kind, digest))
        return entries

    def dir_hash(self, path: str | os.PathLike[str]) -> str:
        return hash_bytes(manifest_bytes(self.dir_manifest(path)))

    def forget(self, path: str | os.PathLike[str]) -> None:
        key = os.fspath(path)
        if self.entries.pop(key, None) is not None:
            self._racy.discard(key)
            self._changed.add(key)
            self._dirty = True


# A stored row: (path, size, mtime_ns, ino, ctime_ns, hash, trusted), made an entry without a Python frame.
_ROW = 7
_key = itemgetter(0)
_fields = itemgetter(slice(1, None))
_entry = partial(tuple.__new__, StatEntry)
# A save appends unless that would leave more appended rows than this or half the entries.
_APPEND_AT_LEAST = 256


def _earlier_layout(blob: bytes) -> bool:
    """Whether `blob` is a whole stat cache in the layout before the framing."""
    try:
        FRAME.load(blob)
    except framing.OtherVersion:
        return True
    except framing.Damaged:
        pass
    return False


def _parts(payload: object) -> tuple[tuple[tuple[object, ...], ...], tuple[str, ...]]:
    """A frame's (rows, dropped paths), checked (ValueError if not that)."""
    if not isinstance(payload, tuple) or len(payload) != 2:
        raise ValueError("frame")
    rows, dropped = payload
    if not isinstance(rows, tuple) or not all(type(row) is tuple and len(row) == _ROW for row in rows):
        raise ValueError("rows")
    if not isinstance(dropped, tuple) or not all(type(path) is str for path in dropped):
        raise ValueError("dropped")
    return rows, dropped


__all__ = ["StatCache", "StatEntry"]
