"""A run-cache log (`runs/<a>.log`): the entries of sixteen folders, appended.

Each entry is a frame (`state.framing`, magic `PIVRUNL\\n`) of msgpack
`[name, entry]`, written with one `write` to the file opened for appending,
under a shared `flock`; the last frame of a name wins.  A frame that fails
its check is skipped (reading goes on at the next frame's magic).  A log is
only ever rewritten (without damaged frames, or without what gc drops)
under the exclusive lock, from what it holds then: so a frame another
process is still appending is never taken for damage, and none appended
before the rename is lost.  An appender that waited for the lock checks
that the file it holds is still the log, else appends to the new one.  A
frame of another format version (a newer pivotbuild's) is kept as it is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from pivotbuild.state import framing
from pivotbuild.state.files import write_atomic

LOG_MAGIC = b"PIVRUNL\n"
LOG = framing.Format(LOG_MAGIC, 1, "run-cache log entry")


def read_log(blob: bytes) -> tuple[dict[str, bytes], int, list[bytes]]:
    """A log's entries, name -> entry (the last frame of a name wins); how
    many frames were torn or damaged; and the frames of another format
    version, whole."""
    entries: dict[str, bytes] = {}
    foreign: list[bytes] = []
    damaged = pos = 0
    while pos < len(blob):
        try:
            end = LOG.check(blob, pos)
            name, entry = LOG.loads(blob[pos + framing.HEADER.size : end])
            if not isinstance(name, str) or not isinstance(entry, bytes):
                raise framing.Damaged("not a name and an entry")
        except framing.OtherVersion:  # (a valid frame: its checksum held)
            end = pos + framing.HEADER.size + framing.HEADER.unpack_from(blob, pos)[3]
            foreign.append(blob[pos : end + framing.CHECKSUM])
            pos = end + framing.CHECKSUM
            continue
        except (framing.Damaged, ValueError, TypeError):
            damaged += 1
            found = blob.find(LOG_MAGIC, pos + 1)
            pos = len(blob) if found < 0 else found
            continue
        entries[name] = entry
        pos = end + framing.CHECKSUM
    return entries, damaged, foreign


def frame_of(blob: bytes, name: str) -> int | None:
    """Where the last frame naming `name` may start in a log's bytes (found
    by a search for the name, which follows the frame's header and
    msgpack's array and string tags), or None.  Not checked: `entry_at`
    checks it, and says Damaged where the name was found elsewhere."""
    found = blob.rfind(name.encode())
    if found < 0:
        return None
    return found - framing.HEADER.size - 1 - (1 if len(name) < 32 else 2)  # (fixstr, or str8 up to 255)


class Indexed:
    """What this process read of a log (`read_indexed`): its bytes, where
    the last frame of each name in them starts (`frames`), and the stage
    keys they name (`skeys`, the names' part before the `-`).  Read again,
    it is extended in place (`blob` a new bytes object, names added):
    a caller holding an earlier `blob` checks it is still this one's."""

    __slots__ = ("blob", "frames", "ident", "skeys", "walked", "walking")

    def __init__(self, ident: tuple[int, int]) -> None:
        self.ident = ident  # the file's (device, inode)
        self.blob = b""
        self.walked = 0  # where the walk of the frames stopped (len(blob): all of them)
        self.frames: dict[str, int] = {}
        self.skeys: set[str] = set()
        # Walked from its second read on: a build in a process of its own
        # reads a log once, and searches it for the few names it looks up
        # for less than a walk of every frame would cost it.
        self.walking = False

    def covers(self, blob: bytes) -> bool:
        """Whether `frames` stands for every frame of `blob` (this one's bytes,
        walked to their end: else a frame cut short, or still being
        appended, stopped the walk, and `blob` is searched instead)."""
        return blob is self.blob and self.walked == len(blob)


# A log's path -> what this process read of it: a build server's next build
# reads only what was appended since (a log is only ever appended to, or
# replaced whole by a rename: another inode).
_READ: dict[str, Indexed] = {}
_READ_MAX = 64 << 20  # bytes kept at most (forgotten all at once past this)


def read_indexed(path: str) -> Indexed | None:
    """The log at `path` (None if it cannot be read), indexed by name from
    its second read in this process on (`Indexed.walking`): what this
    process read of it before is kept, and only the bytes appended since
    are read and walked (a frame's header and name, not its checksum:
    `entry_at` checks the frame asked for).  A log the same size as when
    last read is not opened."""
    kept = _READ.get(path)
    try:
        if kept is not None:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == kept.ident and st.st_size == len(kept.blob):
                if not kept.walking:  # (read before: walked from now on)
                    kept.walking = True
                    kept.walked = _walk(kept.blob, kept.walked, kept.frames, kept.skeys)
                return kept
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if kept is None or kept.ident != ident or len(kept.blob) > st.st_size:
            kept = Indexed(ident)
        offset, chunks = len(kept.blob), []
        while chunk := os.pread(fd, max(st.st_size - offset, 1 << 16), offset):
            chunks.append(chunk)
            offset += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    if _READ.get(path) is kept:  # (read before: walked from now on)
        kept.walking = True
    elif sum(len(k.blob) for k in _READ.values()) > _READ_MAX:
        _READ.clear()
    if chunks:
        kept.blob = b"".join([kept.blob, *chunks])
    if kept.walking and kept.walked < len(kept.blob):
        kept.walked = _walk(kept.blob, kept.walked, kept.frames, kept.skeys)
    _READ[path] = kept
    return kept


def _appended(path: str, fd: int, frame: bytes) -> None:
    """`frame` was just appended to the log at `path` (open at `fd`): where
    this process had read all of it before, and nothing else was appended
    in between, what it keeps is extended with `frame` (the next read then
    finds the log as it left it, and opens nothing)."""
    kept = _READ.get(path)
    if kept is None:
        return
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == kept.ident and st.st_size == len(kept.blob) + len(frame):
        kept.blob += frame
        if kept.walking:
            kept.walked = _walk(kept.blob, kept.walked, kept.frames, kept.skeys)


def _walk(blob: bytes, pos: int, frames: dict[str, int], skeys: set[str]) -> int:
    """Note each frame's name from `pos` on (into `frames` and `skeys`), up
    to the end of `blob` or a frame that is not whole or not a log entry's;
    where it stopped."""
    head, end_all, magic = framing.HEADER.size, len(blob), LOG_MAGIC
    while pos + head + framing.CHECKSUM <= end_all:
        found, _version, _flags, length = framing.HEADER.unpack_from(blob, pos)
        end = pos + head + length + framing.CHECKSUM
        if found != magic or end > end_all:
            break
        name = _name_at(blob, pos + head, end)
        if name is None:
            break
        frames[name] = pos
        skeys.add(name.partition("-")[0])
        pos = end
    return pos


def _name_at(blob: bytes, at: int, end: int) -> str | None:
    """The name a frame's msgpack `[name, entry]` at `at` begins with, or None."""
    if at + 2 > end or blob[at] != 0x92:  # (an array of two)
        return None
    tag = blob[at + 1]
    if 0xA0 <= tag <= 0xBF:  # fixstr
        size, start = tag & 0x1F, at + 2
    elif tag == 0xD9 and at + 3 <= end:  # str8
        size, start = blob[at + 2], at + 3
    else:
        return None
    if start + size > end:
        return None
    try:
        return blob[start : start + size].decode()
    except UnicodeDecodeError:
        return None


def entry_at(blob: bytes, pos: int, name: str) -> bytes:
    """The entry of the frame at `pos`, checked, which `frame_of` said holds
    `name`.  Raises framing.Damaged."""
    if pos < 0:
        raise framing.Damaged("not a frame")
    end = LOG.check(blob, pos)
    found = LOG.loads(memoryview(blob)[pos + framing.HEADER.size : end])
    if not isinstance(found, list) or len(found) != 2 or found[0] != name or not isinstance(found[1], bytes):
        raise framing.Damaged("not the entry its name said")
    return found[1]


def log_bytes(entries: dict[str, bytes], foreign: list[bytes] | None = None) -> bytes:
    return b"".join([*(foreign or ()), *(LOG.dump([name, entry]) for name, entry in entries.items())])


def append(path: str, name: str, entry: bytes, *, create: bool = True) -> None:
    """Append one entry to the log at `path` (as `append_many`)."""
    append_many(path, [(name, entry)], create=create)


def append_many(path: str, entries: list[tuple[str, bytes]], *, create: bool = True) -> None:
    """Append these entries to the log at `path` (made if missing, with
    `create`; else nothing is appended to a log that is missing), a frame
    each, with one `write`."""
    frame = b"".join(LOG.dump([name, entry]) for name, entry in entries)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    for attempt in range(3):
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            if create:
                raise
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if attempt < 2 and not _still(fd, path):
                continue  # rewritten while we waited for the lock: append to the new log
            if os.write(fd, frame) != len(frame):  # (a full disk: a torn frame, which readers skip)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            _appended(path, fd, frame)
            return
        finally:
            os.close(fd)


def rewrite(
    path: str, change: Callable[[dict[str, bytes]], bool] | None = None, *, write: bool = True
) -> tuple[dict[str, bytes], int]:
    """Under the log's exclusive lock, read it again; if it holds damaged
    frames, or `change` (given its entries, to alter in place) says it
    changed them, write it again without them (unless not `write`).  Its
    entries, and how many frames were damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        entries: dict[str, bytes] = {}
        if change is not None:
            change(entries)
        return entries, 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # (waits for an append in progress: one write)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        entries, damaged, foreign = read_log(b"".join(chunks))
        changed = change(entries) if change is not None else False
        if write and (damaged or changed):
            with contextlib.suppress(OSError):
                if entries or foreign:
                    write_atomic(Path(path), log_bytes(entries, foreign), fsync=False)
                else:
                    os.unlink(path)
        return entries, damaged
    finally:
        os.close(fd)


def _still(fd: int, path: str) -> bool:
    """Whether descriptor `fd` is still the file at `path`."""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
