"""The run cache: for each stage, the outputs it produced for each combination
of fingerprint and dep hashes it has seen.  A stage about to run with inputs
seen before is restored from the cache instead (status `restored`).

Entries live at `<cache>/runs/<ab>/<stage key>-<inputs key>` as msgpack,
where `ab` begins the stage key.  (Not a folder per stage: creating a
directory costs as much as creating a file, and a clean build would pay one
for every stage.)  An entry is created in place (an open and a write), not
written beside, chmod'ed and renamed: a clean build writes one per stage.  A
reader never trusts a torn entry: one that does not decode is ignored (the
stage runs, or push skips it), and replaced when the stage is recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgpack

from pivotbuild.hashing import hash_bytes
from pivotbuild.model import StageId
from pivotbuild.state import codec
from pivotbuild.state.records import FileRecord

RUNS = "runs"


def stage_key(sid: StageId) -> str:
    return hash_bytes(f"{sid.pipeline}\0{sid.name}".encode())


def entry_rel(skey: str, ikey: str) -> str:
    """The entry for these keys, relative to the cache directory."""
    return f"{RUNS}/{skey[:2]}/{skey}-{ikey}"


def folder_rel(skey: str) -> str:
    """The folder holding the stage's entries (among others), relative to the cache directory."""
    return f"{RUNS}/{skey[:2]}"


def of_stage(skey: str, names: Iterable[str]) -> list[str]:
    """Those of `names` (in the stage's folder) that are the stage's entries, sorted."""
    prefix = f"{skey}-"
    return sorted(n for n in names if n.startswith(prefix))


def inputs_key(fingerprint: str, deps: Sequence[FileRecord]) -> str:
    listed = [(d.path, d.kind, d.hash) for d in deps]
    return hash_bytes(json.dumps([fingerprint, listed]).encode("utf-8", "surrogateescape"))


class RunCache:
    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._folders: set[Path] = set()  # folders known to exist

    def _path(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> Path:
        return self.cache_dir / entry_rel(stage_key(sid), inputs_key(fingerprint, deps))

    def lookup(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> tuple[FileRecord, ...] | None:
        """The outputs recorded for exactly these inputs, if any."""
        try:
            data = msgpack.unpackb(self._path(sid, fingerprint, deps).read_bytes(), raw=False)
            return tuple(codec.file_from(o) for o in data["outs"])
        except (OSError, ValueError, TypeError, KeyError, RecursionError, msgpack.UnpackException):
            return None

    def record(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord], outs: tuple[FileRecord, ...]) -> None:
        path = self._path(sid, fingerprint, deps)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        blob: bytes = msgpack.packb({"outs": [codec.file_obj(o) for o in outs]}, use_bin_type=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                try:
                    if path.read_bytes() == blob:
                        return  # recorded already (by an earlier build, or one running beside this)
                except OSError:
                    pass
                path.unlink(missing_ok=True)  # torn, or other outputs: the newest result wins
                continue
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
            return
