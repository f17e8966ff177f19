"""The journal: each finished stage appended durably the moment it finishes.

A build killed at any instant loses at most the stages still running: the next
build folds what the journal holds into the lockfile before deciding anything.

Each entry is a frame: 4-byte big-endian length N, N bytes of msgpack (a
cattrs-unstructured StageRecord), then the 8-byte XXH3-64 of those N bytes.
A frame cut short by a crash, or failing its checksum, ends the journal:
everything before it is good, nothing after it is trusted.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cattrs
import msgpack
import xxhash

from pivotbuild.state import lockfile
from pivotbuild.state.records import LockData, StageRecord

_LEN = struct.Struct(">I")
_SUM = 8
_converter = cattrs.Converter()


def frame(record: StageRecord) -> bytes:
    payload: bytes = msgpack.packb(_converter.unstructure(record), use_bin_type=True)
    return _LEN.pack(len(payload)) + payload + xxhash.xxh3_64_digest(payload)


class Journal:
    """Appends StageRecords to `path`, each write fsync'ed before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, record: StageRecord) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        data = frame(record)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to {self.path}")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_records(path: Path) -> tuple[list[StageRecord], bool]:
    """The good records in a journal, and whether a damaged tail was dropped."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return [], False
    records: list[StageRecord] = []
    pos = 0
    while pos < len(blob):
        if pos + _LEN.size > len(blob):
            return records, True
        (n,) = _LEN.unpack_from(blob, pos)
        start, end = pos + _LEN.size, pos + _LEN.size + n
        if end + _SUM > len(blob) or xxhash.xxh3_64_digest(blob[start:end]) != blob[end : end + _SUM]:
            return records, True
        try:
            records.append(_converter.structure(msgpack.unpackb(blob[start:end], raw=False), StageRecord))
        except (ValueError, TypeError, msgpack.UnpackException, cattrs.BaseValidationError):
            return records, True
        pos = end + _SUM
    return records, False


def fold(journal_path: Path, lock_path: Path, base: LockData) -> tuple[LockData, bool]:
    """Apply the journal's records over `base`, write the lockfile if that changes
    it, then remove the journal.  Returns the new data and whether a damaged
    journal tail was dropped.  Safe to repeat after a crash at any point."""
    records, damaged = read_records(journal_path)
    if not records and not damaged and not journal_path.exists():
        return base, False
    merged = base.by_name()
    for record in records:
        merged[record.name] = record
    data = LockData.of(merged)
    lockfile.write(lock_path, data)
    journal_path.unlink(missing_ok=True)
    return data, damaged
