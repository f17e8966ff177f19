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


def append(path: str, name: str, entry: bytes) -> None:
    """Append one entry to the log at `path` (made if missing)."""
    append_many(path, [(name, entry)])


def append_many(path: str, entries: list[tuple[str, bytes]]) -> None:
    """Append these entries to the log at `path` (made if missing), a frame
    each, with one `write`."""
    frame = b"".join(LOG.dump([name, entry]) for name, entry in entries)
    for attempt in range(3):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if attempt < 2 and not _still(fd, path):
                continue  # rewritten while we waited for the lock: append to the new log
            if os.write(fd, frame) != len(frame):  # (a full disk: a torn frame, which readers skip)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
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
