"""The binary lockfile `Pivotfile.lock` (format version 1).

One frame (`state.framing`, whose layout is this file's): the magic
89 'P' 'I' 'V' 0D 0A 1A 0A, version 1, and a zstd frame (level 1) of msgpack
of the LockData as maps (`state.codec`), checked by its XXH3-128.

A file that fails any check is reported (`LockfileError`) and the caller treats
it as absent: the stages it described simply run again.

A build reads the lockfile as `Records`: the payload is split into each
record's packed bytes without unpacking them, and a stage's record is
decoded (and type-checked) only when the build asks for it, since a build
with a few stages to run never looks at the records of the stages it finds
sealed.  Untouched records are written back as the bytes they were read
from: msgpack packs `{"stages": [...]}` as its header followed by each
record's own bytes, so a file pivotbuild wrote is what packing every record
afresh gives.  (A record another writer packed otherwise, a short string in
a longer form, say, keeps its bytes until its stage is recorded again.)
"""

from __future__ import annotations

from pathlib import Path

import msgpack

from pivotbuild.paths import LOCK_COPIES
from pivotbuild.state import codec, framing
from pivotbuild.state.files import write_atomic
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.records import LockData, StageRecord

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"\x89PIV\r\n\x1a\n"
VERSION = 1
# Level 1: a lockfile is mostly hashes, which do not compress; on a 1,000-stage
# lockfile level 1 gave 92 KB in 1.5 ms and level 9 101 KB in 14 ms.
FRAME = framing.Format(MAGIC, VERSION, "lockfile", zstd_level=1)

# A lockfile that cannot be trusted; `str()` says why, for a one-line warning.
LockfileError = framing.Damaged


class Records:
    """A lockfile's stage records by name, each decoded from its plain values
    (or its packed bytes, as read) the first time it is asked for."""

    def __init__(self, plain: dict[str, dict[str, Any]] | None = None, *, raw: dict[str, bytes] | None = None) -> None:
        self._plain = plain if plain is not None else {}  # name -> the record as msgpack gave it
        self._raw = raw if raw is not None else {}  # name -> the record's msgpack bytes, as read
        self._decoded: dict[str, StageRecord] = {}  # name -> record, decoded or set
        self._set: set[str] = set()  # names given a new record (written packed afresh)

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
        if record is None and (name in self._raw or name in self._plain):
            try:
                plain = self._plain[name] if name in self._plain else msgpack.unpackb(self._raw[name])
                record = codec.record_from(plain)
                if record.name != name:  # (a record naming itself twice, read by its first name)
                    raise ValueError(f"named both {name} and {record.name}")
                self._decoded[name] = record
            except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
                self._plain.pop(name, None)
                self._raw.pop(name, None)
                raise LockfileError(f"the record of stage {name} does not decode ({exc})") from exc
        return record

    def __setitem__(self, name: str, record: StageRecord) -> None:
        self._decoded[name] = record
        self._set.add(name)

    def set(self, name: str, record: StageRecord, packed: bytes) -> None:
        """Give stage `name` a new record, already packed as the lockfile holds
        it (`msgpack.packb(codec.record_obj(record))`: the journal's frame
        payload), so that writing the lockfile does not pack it again."""
        self._decoded[name] = record
        self._raw[name] = packed
        self._plain.pop(name, None)
        self._set.discard(name)

    def __contains__(self, name: str) -> bool:
        return name in self._decoded or name in self._raw or name in self._plain

    def _names(self) -> list[str]:
        return sorted(self._raw.keys() | self._plain.keys() | self._decoded.keys())

    def __len__(self) -> int:
        return len(self._names())

    def data(self) -> LockData:
        """Every record, decoded.  Raises LockfileError if one does not decode."""
        return LockData(tuple(r for name in self._names() if (r := self.get(name)) is not None))

    def plain(self) -> dict[str, Any]:
        """The lockfile's content as msgpack reads it: records sorted by name."""
        return msgpack.unpackb(self.payload())  # type: ignore[no-any-return]

    def payload(self) -> bytes:
        """The lockfile's content packed, records sorted by name: the bytes
        msgpack makes of `{"stages": [...]}`.  A record not set since it was
        read is written as the bytes it was read from, unpacked and packed by
        nobody (at 10,000 stages that was most of a small build's cost)."""
        names = self._names()
        raw, plain, decoded, changed = self._raw, self._plain, self._decoded, self._set
        packer = msgpack.Packer(use_bin_type=True)
        parts = [packer.pack_map_header(1), packer.pack("stages"), packer.pack_array_header(len(names))]
        for name in names:
            if name in raw and name not in changed:
                parts.append(raw[name])
            elif name in decoded:
                parts.append(packer.pack(codec.record_obj(decoded[name])))
            else:
                parts.append(packer.pack(plain[name]))
        return b"".join(parts)


def encode(data: LockData | Records) -> bytes:
    """Deterministic bytes for `data`."""
    if isinstance(data, Records):
        return FRAME.pack(data.payload())
    return FRAME.dump(codec.lock_obj(data))


def decode(blob: bytes) -> LockData:
    """Parse lockfile bytes.  Raises LockfileError saying what is wrong."""
    return decode_records(blob).data()


_NOT_RECORDS = "payload does not decode (not a list of named stage records)"


def decode_records(blob: bytes) -> Records:
    """Parse lockfile bytes, checking every record is a map with a name but
    decoding none yet: each is kept as its packed bytes.  Raises LockfileError
    saying what is wrong."""
    payload = FRAME.unpack(blob)
    try:
        return Records(raw=_split(payload))
    except LockfileError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise LockfileError(f"payload does not decode ({type(exc).__name__})") from exc


def _split(payload: bytes | memoryview) -> dict[str, bytes]:
    """Each record's msgpack bytes by its name: the records skipped over, not
    unpacked, and only each name read (the first key, as `codec.record_obj`
    writes it; a record written otherwise is unpacked for its name)."""
    data = bytes(payload)
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        keys = unpacker.read_map_header()
    except msgpack.UnpackValueError:
        raise LockfileError(_NOT_RECORDS) from None
    found: dict[str, bytes] = {}
    for _ in range(keys):
        if unpacker.unpack() != "stages":
            unpacker.skip()
            continue
        try:
            n = unpacker.read_array_header()
        except msgpack.UnpackValueError:
            raise LockfileError(_NOT_RECORDS) from None
        found = {}  # (a map naming "stages" twice: the last, as msgpack reads it)
        for _ in range(n):
            start = unpacker.tell()
            unpacker.skip()
            one = data[start : unpacker.tell()]
            name = _name(one)
            if name is None:
                raise LockfileError(_NOT_RECORDS)
            found[name] = one
    if unpacker.tell() != len(data):
        raise LockfileError("payload does not decode (ExtraData)")
    return found


def _name(record: bytes) -> str | None:
    """The name of a packed record: a map whose first key is "name" and value
    a short string read straight from the bytes, else the record unpacked."""
    head = record[0] if record else 0
    at = 1 if 0x80 <= head <= 0x8F else 3 if head == 0xDE else 5 if head == 0xDF else 0
    if at and record[at : at + 5] == b"\xa4name":
        kind, at = record[at + 5], at + 6
        if 0xA0 <= kind <= 0xBF:
            size = kind - 0xA0
        elif kind == 0xD9:
            size, at = record[at], at + 1
        else:
            size = -1
        if size >= 0:
            try:
                return record[at : at + size].decode("utf-8")
            except UnicodeDecodeError:
                return None
    obj = msgpack.unpackb(record)
    name = obj.get("name") if isinstance(obj, dict) else None
    return name if isinstance(name, str) else None


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


def write(path: Path, data: LockData | Records, *, copy_to: Path | None = None) -> bool:
    """Write `data` atomically unless the file already holds exactly these bytes.
    Returns True if the file was written.  `copy_to` gets the same bytes too
    (best effort, no fsync: the cache's copy, checked when read; see `copy_path`)."""
    blob = encode(data)
    try:
        if path.read_bytes() == blob:
            return False
    except OSError:
        pass
    write_atomic(path, blob)
    if copy_to is not None:
        try:
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(copy_to, blob, fsync=False)
        except OSError:
            pass
    return True


def copy_path(root: Path, pipeline_dir: str) -> Path:
    """Where the cache keeps its copy of pipeline `pipeline_dir`'s last lockfile
    (see StateStore.close and OutputCache.restore)."""
    return root / LOCK_COPIES / (hash_bytes(pipeline_dir.encode("utf-8", "surrogateescape"))[:16] + ".lock")
