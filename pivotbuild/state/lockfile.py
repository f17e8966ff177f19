"""The binary lockfile `Pivotfile.lock` (format version 1).

One frame (`state.framing`, whose layout is this file's): the magic
89 'P' 'I' 'V' 0D 0A 1A 0A, version 1, and a zstd frame (level 1) of msgpack
of the LockData as maps (`state.codec`), checked by its XXH3-128.

A file that fails any check is reported (`LockfileError`) and the caller treats
it as absent: the stages it described simply run again.

A build reads the lockfile as `Records`: the payload is unpacked into plain
values, and a stage's record is decoded (and type-checked) only when the build
asks for it, since a build with a few stages to run never looks at the records
of the stages it finds sealed.  Untouched records are written back from the
same plain values, which pack to the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pivotbuild.paths import LOCK_COPIES
from pivotbuild.state import codec, framing
from pivotbuild.state.files import write_atomic
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.records import LockData, StageRecord

MAGIC = b"\x89PIV\r\n\x1a\n"
VERSION = 1
# Level 1: a lockfile is mostly hashes, which do not compress; on a 1,000-stage
# lockfile level 1 gave 92 KB in 1.5 ms and level 9 101 KB in 14 ms.
FRAME = framing.Format(MAGIC, VERSION, "lockfile", zstd_level=1)

# A lockfile that cannot be trusted; `str()` says why, for a one-line warning.
LockfileError = framing.Damaged


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
    return FRAME.dump(data.plain() if isinstance(data, Records) else codec.lock_obj(data))


def decode(blob: bytes) -> LockData:
    """Parse lockfile bytes.  Raises LockfileError saying what is wrong."""
    return decode_records(blob).data()


def decode_records(blob: bytes) -> Records:
    """Parse lockfile bytes, checking every record's shape but decoding none
    yet.  Raises LockfileError saying what is wrong."""
    obj = FRAME.load(blob)
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
