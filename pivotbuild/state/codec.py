"""Records to and from the plain values msgpack stores (lockfile, journal, run cache).

A record is a map keyed by its field names, in field order, so the same
record always packs to the same bytes.  Decoding checks every type and
raises `ValueError` on anything else: a damaged file is reported, never
half-believed.

The mapping is the one cattrs' generated converters give (`cattrs.gen`'s
dict functions, `executable` renamed `exec` and omitted when false, so
records written before the field existed keep their bytes), and
tests/test_codec.py checks that the two agree on every record.  It is
written out by hand because every build that is not a no-op reads the
lockfile and records a stage, and cattrs costs more than issue 12's budget
(3 ms on a 1,000-stage incremental build, 10 ms on opening a 10,000-stage
lockfile), for every record type alike.  Measured with the same mapping
through a `cattrs.Converter` and `cattrs.gen` (plus the strict hooks a
damaged file needs: cattrs' own make a string of a number), CPU time,
interleaved, bytecode compiled:

- importing this module on the build path: 30.6 ms with cattrs, 0.1 ms by
  hand (min of 8 processes); cattrs and attrs are most of it;
- `pivotbuild -s` in a built 1,000-stage project, one stage to run: median
  307 ms with cattrs, 271 ms by hand (262 ms before the framing), 30 rounds;
- a fresh process opening a 10,000-stage lockfile and decoding one record:
  median 111 ms with cattrs, 72 ms by hand (79 ms before), 12 rounds;
- 10,000 records warm: encoding 77 ms against 43 ms, decoding 139 ms
  against 107 ms.
"""

from __future__ import annotations

from collections.abc import Iterable

from pivotbuild.state.records import FileRecord, LockData, ParamRecord, StageRecord

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import Any


def file_obj(r: FileRecord) -> dict[str, Any]:
    matches = [file_obj(m) for m in r.matches] if r.matches else []  # (a glob's; a file has none)
    obj: dict[str, Any] = {"path": r.path, "kind": r.kind, "hash": r.hash, "matches": matches}
    if r.executable:  # only then: records written before the field existed keep their bytes
        obj["exec"] = True
    return obj


def record_obj(r: StageRecord) -> dict[str, Any]:
    return {
        "name": r.name,
        "fingerprint": r.fingerprint,
        "command": r.command,
        "deps": [file_obj(d) for d in r.deps],
        "outs": [file_obj(o) for o in r.outs],
        "params": [{"file": p.file, "key": p.key, "value_json": p.value_json} for p in r.params] if r.params else [],
        "facets": list(map(list, r.facets)),
    }


def lock_obj(data: LockData) -> dict[str, Any]:
    return {"stages": [record_obj(r) for r in data.stages]}


def _map(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a map, found {type(obj).__name__}")
    return obj


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    return value


def _list(obj: dict[str, Any], key: str, default: bool = False) -> Iterable[object]:
    value = obj.get(key, [] if default else None)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key}: expected a list")
    return value


def file_from(obj: object) -> FileRecord:
    # (Most records: a file, no glob's matches, every field of its type: checked at once.)
    if type(obj) is dict and not (matches := obj.get("matches", ())) and type(matches) in (list, tuple):
        path, kind, digest, executable = obj.get("path"), obj.get("kind"), obj.get("hash"), obj.get("exec", False)
        if type(path) is str and type(kind) is str and type(digest) is str and type(executable) is bool:
            return FileRecord(path, kind, digest, (), executable)
    m = _map(obj)
    matches = tuple(file_from(x) for x in _list(m, "matches", default=True))
    executable = m.get("exec", False)
    if not isinstance(executable, bool):
        raise ValueError("exec: expected a boolean")
    return FileRecord(_str(m, "path"), _str(m, "kind"), _str(m, "hash"), matches, executable)


def _param_from(obj: object) -> ParamRecord:
    m = _map(obj)
    return ParamRecord(_str(m, "file"), _str(m, "key"), _str(m, "value_json"))


def _facet_from(obj: object) -> tuple[str, str]:
    if not isinstance(obj, (list, tuple)) or len(obj) != 2 or not all(isinstance(x, str) for x in obj):
        raise ValueError("facet: expected a pair of strings")
    return (obj[0], obj[1])


def record_from(obj: object) -> StageRecord:
    m = _map(obj)
    return StageRecord(
        name=_str(m, "name"),
        fingerprint=_str(m, "fingerprint"),
        command=_str(m, "command"),
        deps=tuple(file_from(x) for x in _list(m, "deps")),
        outs=tuple(file_from(x) for x in _list(m, "outs")),
        params=tuple(_param_from(x) for x in _list(m, "params")),
        facets=tuple(_facet_from(x) for x in _list(m, "facets", default=True)),
    )


def lock_from(obj: object) -> LockData:
    return LockData(tuple(record_from(x) for x in _list(_map(obj), "stages", default=True)))
