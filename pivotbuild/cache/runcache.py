"""The run cache: for each stage, the outputs it produced for each combination
of fingerprint and dep hashes it has seen.  A stage about to run with inputs
seen before is restored from the cache instead (status `restored`).

Entries live at `<cache>/runs/<stage key>/<inputs key>` as msgpack, written
atomically; a damaged entry is ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import cattrs
import msgpack

from pivotbuild.hashing import hash_bytes
from pivotbuild.model import StageId
from pivotbuild.snapshot import Snapshot
from pivotbuild.state.records import FileRecord
from pivotbuild.state_files import write_atomic

RUNS = "runs"
_converter = cattrs.Converter()


def stage_key(sid: StageId) -> str:
    return hash_bytes(f"{sid.pipeline}\0{sid.name}".encode())


def inputs_key(snap: Snapshot) -> str:
    deps = [(d.path, d.kind, d.hash) for d in snap.deps]
    return hash_bytes(json.dumps([snap.fingerprint, deps]).encode("utf-8", "surrogateescape"))


class RunCache:
    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / RUNS

    def _path(self, sid: StageId, snap: Snapshot) -> Path:
        return self.dir / stage_key(sid) / inputs_key(snap)

    def lookup(self, sid: StageId, snap: Snapshot) -> tuple[FileRecord, ...] | None:
        """The outputs recorded for exactly these inputs, if any."""
        try:
            data = msgpack.unpackb(self._path(sid, snap).read_bytes(), raw=False)
            return tuple(_converter.structure(o, FileRecord) for o in data["outs"])
        except (OSError, ValueError, TypeError, KeyError, msgpack.UnpackException, cattrs.BaseValidationError):
            return None

    def record(self, sid: StageId, snap: Snapshot, outs: tuple[FileRecord, ...]) -> None:
        path = self._path(sid, snap)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob: bytes = msgpack.packb({"outs": [_converter.unstructure(o) for o in outs]}, use_bin_type=True)
        write_atomic(path, blob)
