"""The run cache: for each stage, the outputs it produced for each combination
of fingerprint and dep hashes it has seen.  A stage about to run with inputs
seen before is restored from the cache instead (status `restored`).

Entries live at `<cache>/runs/<stage key>/<inputs key>` as msgpack, written
atomically; a damaged entry is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cattrs
import msgpack

from pivotbuild.hashing import hash_bytes
from pivotbuild.model import StageId
from pivotbuild.state.records import FileRecord
from pivotbuild.state_files import write_atomic

RUNS = "runs"
_converter = cattrs.Converter()


def stage_key(sid: StageId) -> str:
    return hash_bytes(f"{sid.pipeline}\0{sid.name}".encode())


def inputs_key(fingerprint: str, deps: Sequence[FileRecord]) -> str:
    listed = [(d.path, d.kind, d.hash) for d in deps]
    return hash_bytes(json.dumps([fingerprint, listed]).encode("utf-8", "surrogateescape"))


class RunCache:
    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / RUNS

    def _path(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> Path:
        return self.dir / stage_key(sid) / inputs_key(fingerprint, deps)

    def lookup(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> tuple[FileRecord, ...] | None:
        """The outputs recorded for exactly these inputs, if any."""
        try:
            data = msgpack.unpackb(self._path(sid, fingerprint, deps).read_bytes(), raw=False)
            return tuple(_converter.structure(o, FileRecord) for o in data["outs"])
        except (OSError, ValueError, TypeError, KeyError, msgpack.UnpackException, cattrs.BaseValidationError):
            return None

    def record(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord], outs: tuple[FileRecord, ...]) -> None:
        path = self._path(sid, fingerprint, deps)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob: bytes = msgpack.packb({"outs": [_converter.unstructure(o) for o in outs]}, use_bin_type=True)
        write_atomic(path, blob, fsync=False)  # lookup() ignores an entry that does not decode
