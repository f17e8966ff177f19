"""The binary lockfile `Pivotfile.lock` (format version 1).

Layout (all integers big-endian):

    offset  size  what
    0       8     magic  89 'P' 'I' 'V' 0D 0A 1A 0A  (catches text-mode mangling, like PNG)
    8       2     format version (1)
    10      2     flags (0)
    12      4     length N of the payload
    16      N     payload: zstd frame of msgpack of the LockData as maps (`state.codec`)
    16+N    16    XXH3-128 of bytes 0..16+N

A file that fails any check is reported (`LockfileError`) and the caller treats
it as absent: the stages it described simply run again.

A build reads the lockfile as `Records`: the payload is unpacked into plain
values, and a stage's record is decoded (and type-checked) only when the build
asks for it, since a build with a few stages to run never looks at the records
of the stages it finds sealed.  Untouched records are written back from the
same plain values, which pack to the same bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgpack
import xxhash
import zstandard

from pivotbuild.state import codec
from pivotbuild.state.files import write_atomic
from pivotbuild.state.records import LockData, StageRecord

MAGIC = b"\x89PIV\r\n\x1a\n"
VERSION = 1
_HEADER = struct.Struct(">8sHHI")
_CHECKSUM = 16
# Level 1: a lockfile is mostly hashes, which do not compress; on a 1,000-stage
# lockfile level 1 gave 92 KB in 1.5 ms and level 9 101 KB in 14 ms.
_LEVEL = 1


class LockfileError(Exception):
    """A lockfile that cannot be trusted; `str()` says why, for a one-line warning."""


class Records:
    """A lockfile's stage records by name, each decoded from its plain values
    the first time it is asked for."""

    def __init__(self, plain: dict[str, dict[str, Any]] | None = None) -> None:
        self._plain = plain if plain is not None else {}  # name -> the record as msgpack gave it
        self._decoded: dict[str, StageRecord] = {}  # name -> record, decoded or set

    @staticmethod
    def of(data: LockData) -> Records:
        records = Records()
        for record in data.stages:
            records[record.name] = record
        return records

    def get(self, name: str) -> StageRecord | None:
        """The record of stage `name`, if there is one.  Raises LockfileError if
        it does not decode (it is dropped: the stage simply runs again)."""
        record = self._decoded.get(name)
        if record is None and name in self._plain:
            try:
                record = self._decoded[name] = codec.record_from(self._plain[name])
            except (ValueError, TypeError, RecursionError) as exc:
                del self._plain[name]
                raise LockfileError(f"the record of stage {name} does not decode ({exc})") from exc
        return record

    def __setitem__(self, name: str, record: StageRecord) -> None:
        self._decoded[name] = record

    def __contains__(self, name: str) -> bool:
        return name in self._decoded or name in self._plain

    def __len__(self) -> int:
        return len(self._plain.keys() | self._decoded.keys())

    def data(self) -> LockData:
        """Every record, decoded.  Raises LockfileError if one does not decode."""
        names = sorted(self._plain.keys() | self._decoded.keys())
        return LockData(tuple(r for name in names if (r := self.get(name)) is not None))

    def plain(self) -> dict[str, Any]:
        """The lockfile's content as msgpack packs it: records sorted by name."""
        names = sorted(self._plain.keys() | self._decoded.keys())
        decoded, plain = self._decoded, self._plain
        return {"stages": [codec.record_obj(decoded[name]) if name in decoded else plain[name] for name in names]}


def encode(data: LockData | Records) -> bytes:
    """Deterministic bytes for `data`."""
    obj = data.plain() if isinstance(data, Records) else codec.lock_obj(data)
    raw = msgpack.packb(obj, use_bin_type=True)
    payload = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=False, write_content_size=True).compress(raw)
    head = _HEADER.pack(MAGIC, VERSION, 0, len(payload))
    body = head + payload
    return body + xxhash.xxh3_128_digest(body)


def decode(blob: bytes) -> LockData:
    """Parse lockfile bytes.  Raises LockfileError saying what is wrong."""
    return decode_records(blob).data()


def decode_records(blob: bytes) -> Records:
    """Parse lockfile bytes, checking every record's shape but decoding none
    yet.  Raises LockfileError saying what is wrong."""
    if len(blob) < _HEADER.size + _CHECKSUM:
        raise LockfileError("too short to be a pivotbuild lockfile")
    magic, version, _flags, length = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise LockfileError("not a pivotbuild lockfile (bad magic)")
    if version != VERSION:
        raise LockfileError(f"format version {version} is not one this pivotbuild reads ({VERSION})")
    end = _HEADER.size + length
    if len(blob) != end + _CHECKSUM:
        raise LockfileError("truncated or padded (length does not match)")
    if xxhash.xxh3_128_digest(blob[:end]) != blob[end:]:
        raise LockfileError("checksum mismatch (the file is damaged)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob[_HEADER.size : end])
        obj = msgpack.unpackb(raw, raw=False)
    except (zstandard.ZstdError, ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise LockfileError(f"payload does not decode ({type(exc).__name__})") from exc
    stages = obj.get("stages", []) if isinstance(obj, dict) else None
    if not isinstance(stages, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in stages):
        raise LockfileError("payload does not decode (not a list of named stage records)")
    return Records({r["name"]: r for r in stages})


def read(path: Path) -> LockData:
    """The lockfile at `path`; an empty LockData if there is none.  Raises LockfileError."""
    return read_records(path).data()


def read_records(path: Path) -> Records:
    """The lockfile at `path`, records decoded as asked for; empty if there is
    none.  Raises LockfileError."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return Records()
    except OSError as exc:
        raise LockfileError(f"cannot be read: {exc.strerror}") from exc
    return decode_records(blob)


def write(path: Path, data: LockData | Records) -> bool:
    """Write `data` atomically unless the file already holds exactly these bytes.
    Returns True if the file was written."""
    blob = encode(data)
    try:
        if path.read_bytes() == blob:
            return False
    except OSError:
        pass
    write_atomic(path, blob)
    return True
