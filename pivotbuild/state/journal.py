"""The journal: each finished stage appended durably the moment it finishes.

A build killed at any instant loses at most the stages still running: the next
build folds what the journal holds into the lockfile before deciding anything.

Each entry is one frame (`state.framing`: magic `PIVJRNL\n`, version FORMAT,
length, checksum) of msgpack of a StageRecord as a map (`state.codec`).  A
frame cut short by a crash, failing its checksum or of another version ends
the journal: everything before it is good, nothing after it is trusted.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgpack

from pivotbuild.state import codec, files, framing, lockfile
from pivotbuild.state.records import StageRecord

FORMAT = 2  # 2: `state.framing` frames
FRAME = framing.Format(b"PIVJRNL\n", FORMAT, "journal entry")
SYNC_INTERVAL_S = 0.2  # a power cut loses at most this much more than a SIGKILL would


def frame(record: StageRecord) -> bytes:
    return FRAME.pack(packed(record))


def packed(record: StageRecord) -> bytes:
    """The record as msgpack: a frame's payload, and the bytes the lockfile
    holds it as (lockfile.Records.set)."""
    return msgpack.packb(codec.record_obj(record), use_bin_type=True)  # type: ignore[no-any-return]


class Journal:
    """Appends StageRecords to `path`.

    Each frame is written with one `write` before `append` returns, so it
    survives the build being killed at any moment (the kernel has it).  The
    flush to disk, which only a power cut needs, is a group commit: a
    background thread fsyncs the frames added since its last fsync, at most
    once per `SYNC_INTERVAL_S`, so a build finishing hundreds of short stages a
    second pays for a few fsyncs, not one per stage (an fsync as each stage
    ends cost ~0.3 ms of system time per stage, and a GIL round trip), and the
    scheduler never waits for the disk.  `close` fsyncs whatever is left
    (unless the lockfile is written, with its fsync, right after)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pending = threading.Event()
        self._wake = threading.Event()  # set by close: stop waiting for more frames
        self.appended = 0  # frames this process wrote
        self._closing = False
        self._syncer: threading.Thread | None = None

    def append(self, record: StageRecord) -> bytes:
        """Write the record's frame; returns the record packed (its payload)."""
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            self._syncer = threading.Thread(target=self._sync_loop, args=(self._fd,), name="journal fsync", daemon=True)
            self._syncer.start()
        payload = packed(record)
        data = FRAME.pack(payload)  # (`frame`, keeping the payload)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to {self.path}")
        self.appended += 1
        if not self._pending.is_set():  # (set until the syncer takes it: its fsync, after the clear, covers this frame)
            self._pending.set()
        return payload

    def _sync_loop(self, fd: int) -> None:
        while True:
            self._pending.wait()
            if self._closing:
                return
            # Let the frames of the next moments join this fsync (close ends the wait).
            self._wake.wait(SYNC_INTERVAL_S)
            self._pending.clear()
            if self._closing:
                return
            try:
                os.fsync(fd)
            except OSError:
                return  # close() fsyncs again and reports nothing worse than before

    def close(self, *, sync: bool = True) -> None:
        """Stop appending: the syncer ends, and what it has not flushed is
        fsync'ed, unless `sync` is False: for a caller about to write every
        record appended into a file it fsyncs (the lockfile), whose flush
        stands for this one's, which would only come a moment sooner."""
        if self._fd is None:
            return
        self._closing = True
        self._pending.set()
        self._wake.set()
        if self._syncer is not None:
            self._syncer.join()
        try:
            if sync:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
            self._syncer = None
            self._closing = False
            self._wake.clear()


def read_records(path: Path) -> tuple[list[StageRecord], bool]:
    """The good records in a journal, and whether a damaged tail was dropped."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return [], False
    records: list[StageRecord] = []
    try:
        for obj in FRAME.frames(blob):
            records.append(codec.record_from(obj))
    except (ValueError, TypeError, RecursionError):  # framing.Damaged is a ValueError
        return records, True
    return records, False


def fold(journal_path: Path, lock_path: Path, base: lockfile.Records) -> tuple[lockfile.Records, bool]:
    """Apply the journal's records over `base` (in place), write the lockfile if
    that changes it, then remove the journal.  Returns the records and whether
    a damaged journal tail was dropped.  Safe to repeat after a crash at any point."""
    records, damaged = read_records(journal_path)
    if not records and not damaged and not journal_path.exists():
        return base, False
    for record in records:
        base[record.name] = record
    lockfile.write(lock_path, base)
    files.remove(journal_path)
    return base, damaged
