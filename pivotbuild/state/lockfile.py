"""The binary lockfile `Pivotfile.lock` (format version 2).

One frame (`state.framing`, whose layout is this file's): the magic
89 'P' 'I' 'V' 0D 0A 1A 0A, version 2, and zstd frames (level 1), one a
chunk of records (`_chunked`), of msgpack of the LockData as maps
(`state.codec`), checked by its XXH3-128.  Version 1, the same msgpack as one
zstd frame, is still read, and a file of it holding the records a build
would write is left as it is.

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

from itertools import compress
from pathlib import Path

import msgpack
import xxhash

from pivotbuild.paths import LOCK_COPIES
from pivotbuild.state import codec, framing
from pivotbuild.state.files import write_atomic
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.records import LockData, StageRecord

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"\x89PIV\r\n\x1a\n"
VERSION = 2  # 1: the payload one zstd frame (still read); 2: a frame a chunk of records
# Level 1: a lockfile is mostly hashes, which do not compress; on a 1,000-stage
# lockfile level 1 gave 92 KB in 1.5 ms and level 9 101 KB in 14 ms.
FRAME = framing.Format(MAGIC, VERSION, "lockfile", zstd_level=1, older=(1,))
# Records a chunk holds (see `_chunked`): 16 on average, at most 64.  On a
# 1,000-stage lockfile (compare.py's small lattice), chunks of 8, 16 and 32
# records compress to 145, 128 and 115 KB against 92 KB whole, and a build
# that reruns 55 of its stages compresses 16, 12 and 10 of them again, in
# 0.25, 0.34 and 0.47 ms against 1.6 for the whole.
CHUNK = 16
CHUNK_MAX = 64

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
        self._sorted: list[str] | None = None  # every name, sorted (None: to be sorted again)
        # The XXH3-128 of the lockfile's bytes these records were read from or
        # last written as ("" for none): what a seal vouches for (not the file
        # as it is when the seal is made, which someone may have removed or
        # replaced since the build read or wrote it).
        self.digest = ""

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
                self._sorted = None
                raise LockfileError(f"the record of stage {name} does not decode ({exc})") from exc
        return record

    def __setitem__(self, name: str, record: StageRecord) -> None:
        if name not in self:
            self._sorted = None
        self._decoded[name] = record
        self._set.add(name)

    def set(self, name: str, record: StageRecord, packed: bytes) -> None:
        """Give stage `name` a new record, already packed as the lockfile holds
        it (`msgpack.packb(codec.record_obj(record))`: the journal's frame
        payload), so that writing the lockfile does not pack it again."""
        if name not in self:
            self._sorted = None
        self._decoded[name] = record
        self._raw[name] = packed
        self._plain.pop(name, None)
        self._set.discard(name)

    def __contains__(self, name: str) -> bool:
        return name in self._decoded or name in self._raw or name in self._plain

    def _names(self) -> list[str]:
        """Every name, sorted (kept until a name comes or goes: not to be changed)."""
        if self._sorted is None:
            self._sorted = sorted(self._raw.keys() | self._plain.keys() | self._decoded.keys())
        return self._sorted

    def __len__(self) -> int:
        return len(self._names())

    def data(self) -> LockData:
        """Every record, decoded.  Raises LockfileError if one does not decode."""
        return LockData(tuple(r for name in self._names() if (r := self.get(name)) is not None))

    def plain(self) -> dict[str, Any]:
        """The lockfile's content as msgpack reads it: records sorted by name."""
        return msgpack.unpackb(b"".join(self.chunks()))  # type: ignore[no-any-return]

    def chunks(self) -> list[bytes]:
        """The lockfile's content packed, records sorted by name: the bytes
        msgpack makes of `{"stages": [...]}`, in chunks (see `_chunked`).  A
        record not set since it was read is written as the bytes it was read
        from, unpacked and packed by nobody (at 10,000 stages that was most of
        a small build's cost)."""
        return [b"".join(part) for part in self.parts()]

    def parts(self) -> list[tuple[bytes, ...]]:
        """`chunks`, each as its pieces (the header, then packed records)."""
        names = self._names()
        raw, plain, decoded, changed = self._raw, self._plain, self._decoded, self._set
        packed: list[bytes | None] = list(map(raw.get, names))  # (in C: most records are as read)
        if changed or None in packed:
            packer = msgpack.Packer(use_bin_type=True)
            for k, name in enumerate(names):
                if packed[k] is None or name in changed:
                    packed[k] = packer.pack(codec.record_obj(decoded[name]) if name in decoded else plain[name])
        return _chunked(names, packed)  # type: ignore[arg-type]  # (no None is left)


def _chunked(names: list[str], packed: list[bytes]) -> list[tuple[bytes, ...]]:
    """`{"stages": [...]}` packed, the records `packed` (named `names`) cut
    into chunks the lockfile compresses one by one (framing.Format): a chunk
    ends after a record whose name's XXH3-64 is a multiple of CHUNK, or once
    it holds CHUNK_MAX records.  The cuts depend on the names alone, so a
    record that changes changes its own chunk, and one added or removed its
    own and perhaps the next: a build that reruns a few stages of many leaves
    most chunks as they were, and their frames are not compressed again.
    Each chunk as its pieces: the header (the first), then its records.
    (Passes in C over the records: a loop turn a record was 1.5 ms of a
    1,000-stage build.)"""
    head = msgpack.Packer(use_bin_type=True)
    header = head.pack_map_header(1) + head.pack("stages") + head.pack_array_header(len(packed))
    flags = list(map(_cuts.get, names))
    if None in flags:
        flags = [_cut_after(name) if flag is None else flag for flag, name in zip(flags, names, strict=True)]
    ends = list(compress(range(1, len(names) + 1), flags))
    if not ends or ends[-1] != len(names):
        ends.append(len(names))
    parts: list[tuple[bytes, ...]] = []
    start = 0
    for end in ends:
        while end - start > CHUNK_MAX:
            parts.append(tuple(packed[start : start + CHUNK_MAX]))
            start += CHUNK_MAX
        parts.append(tuple(packed[start:end]))
        start = end
    parts[0] = (header, *parts[0])
    return parts


def _frames(parts: list[tuple[bytes, ...]]) -> list[bytes]:
    """Each chunk's zstd frame, kept by the chunk's pieces: a bytes object
    keeps its hash, and equal pieces are the same objects, found equal at
    once, so a chunk of records read or written before takes its frame
    without being joined or hashed again (the lockfile a build server writes
    after each build is mostly such records)."""
    frames = []
    for part in parts:
        frame = _frames_of_parts.get(part)
        if frame is None:
            frame = FRAME.compressed(b"".join(part))
            if len(_frames_of_parts) >= 4096:
                _frames_of_parts.clear()
            _frames_of_parts[part] = frame
        frames.append(frame)
    return frames


_frames_of_parts: dict[tuple[bytes, ...], bytes] = {}


def _cut_after(name: str) -> bool:
    """Whether a chunk ends after the record of stage `name` (kept: a build
    server asks of the same names again and again)."""
    cut = _cuts.get(name)
    if cut is None:
        if len(_cuts) >= 1 << 16:
            _cuts.clear()
        cut = _cuts[name] = xxhash.xxh3_64_intdigest(name.encode("utf-8", "surrogatepass")) % CHUNK == 0
    return cut


_cuts: dict[str, bool] = {}


def encode(data: LockData | Records) -> bytes:
    """Deterministic bytes for `data`."""
    if isinstance(data, Records):
        return FRAME.pack_frames(_frames(data.parts()))
    packer = msgpack.Packer(use_bin_type=True)
    return FRAME.pack_frames(
        _frames(_chunked([r.name for r in data.stages], [packer.pack(codec.record_obj(r)) for r in data.stages]))
    )


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
    records = decode_records(blob)
    records.digest = hash_bytes(blob)
    return records


def write(path: Path, data: LockData | Records, *, copy_to: Path | None = None) -> bool:
    """Write `data` atomically unless the file already holds exactly these bytes.
    Returns True if the file was written.  Records' `digest` is then the
    file's.  `copy_to` gets the same bytes too
    (best effort, no fsync: the cache's copy, checked when read; see `copy_path`)."""
    blob = encode(data)
    try:
        old = path.read_bytes()
    except OSError:
        pass
    else:
        if old == blob or (old[8:10] != blob[8:10] and _same_payload(old, blob)):
            if isinstance(data, Records):
                data.digest = hash_bytes(old)
            return False  # (a file of an older format, of the same records: left as committed)
    write_atomic(path, blob)
    if isinstance(data, Records):
        data.digest = hash_bytes(blob)
    if copy_to is not None:
        try:
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(copy_to, blob, fsync=False)
        except OSError:
            pass
    return True


def _same_payload(old: bytes, new: bytes) -> bool:
    """Whether lockfile `old` (of another format version) holds exactly the
    payload `new` does: then upgrading pivotbuild rewrites no lockfile."""
    try:
        return bytes(FRAME.unpack(old)) == bytes(FRAME.unpack(new))
    except LockfileError:
        return False


def copy_path(root: Path, pipeline_dir: str) -> Path:
    """Where the cache keeps its copy of pipeline `pipeline_dir`'s last lockfile
    (see StateStore.close and OutputCache.restore)."""
    return root / LOCK_COPIES / (hash_bytes(pipeline_dir.encode("utf-8", "surrogateescape"))[:16] + ".lock")
