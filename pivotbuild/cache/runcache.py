"""The run cache: for each stage, the outputs it produced for each combination
of fingerprint and dep hashes it has seen.  A stage about to run with inputs
seen before is restored from the cache instead (status `restored`).

Entries live at `<cache>/runs/<ab>/<stage key>-<inputs key>`,
where `ab` begins the stage key.  (Not a folder per stage: creating a
directory costs as much as creating a file, and a clean build would pay one
for every stage.)  An entry is created in place (an open and a write), not
written beside, chmod'ed and renamed: a clean build writes one per stage.  A
reader never trusts a torn or damaged entry: each is one frame
(`state.framing`: magic `PIVRUN1\n`, version FORMAT, checksum) of msgpack
`{"outs": [...]}`, and one that fails the check is ignored (the stage runs,
or push skips it).  A build says so once and removes it; it is written anew
when the stage is recorded.  An entry of another format version is a miss,
without a word, and is replaced when the stage is recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pivotbuild.model import StageId
from pivotbuild.state import codec, framing
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.records import FileRecord

RUNS = "runs"
MAGIC = b"PIVRUN1\n"
FORMAT = 2  # 2: in a `state.framing` frame
FRAME = framing.Format(MAGIC, FORMAT, "run-cache entry")


def encode_entry(outs: Sequence[FileRecord]) -> bytes:
    return FRAME.dump({"outs": [codec.file_obj(o) for o in outs]})


def decode_entry(blob: bytes) -> tuple[FileRecord, ...]:
    """The outputs an entry names.  Raises `framing.Damaged` (a ValueError,
    saying why) if it is torn or damaged, `framing.OtherVersion` if another
    pivotbuild wrote it."""
    obj = FRAME.load(blob)
    try:
        return tuple(codec.file_from(o) for o in obj["outs"])
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise framing.Damaged(f"does not decode ({type(exc).__name__})") from exc


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
    """One build's (or command's) view of the run cache.  Each folder is
    listed once, on its first lookup, and misses are answered from that
    listing (plus what this object records): a clean build would otherwise
    try to open a missing entry for every stage.  An entry another process
    adds meanwhile may be missed: the stage then runs, as it would have a
    moment earlier."""

    def __init__(self, cache_dir: Path, notice: Callable[[str], None] | None = None) -> None:
        self.cache_dir = cache_dir
        self.notice = notice  # told once about each damaged entry
        self._folders: set[Path] = set()  # folders known to exist
        self._runs = f"{cache_dir}/{RUNS}"
        self._shards: set[str] | None = None  # the folders under runs/, once listed
        self._listed: dict[str, set[str]] = {}  # folder name -> the entries in it, once listed
        self._keyed: dict[str, set[str]] = {}  # folder name -> the stage keys its entries begin with

    def _path(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> Path:
        return self.cache_dir / entry_rel(stage_key(sid), inputs_key(fingerprint, deps))

    def _listing(self, shard: str) -> set[str]:
        """The entries in folder `shard` (`runs/<shard>`), listed once; runs/
        itself is listed once too, so a folder that does not exist (most of
        them, in a first build) costs no system call."""
        names = self._listed.get(shard)
        if names is None:
            if self._shards is None:
                try:
                    self._shards = set(os.listdir(self._runs))
                except OSError:  # none yet (or unreadable: then every lookup misses, as before)
                    self._shards = set()
            names = set()
            if shard in self._shards:
                with contextlib.suppress(OSError):
                    names = set(os.listdir(f"{self._runs}/{shard}"))
            self._keyed[shard] = {n.partition("-")[0] for n in names}
            self._listed[shard] = names  # (after: `record` adds to both once this is set)
        return names

    def lookup(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> tuple[FileRecord, ...] | None:
        """The outputs recorded for exactly these inputs, if any.  A damaged
        entry is reported and removed (so it is reported once).  A stage
        with no entry at all (every stage of a first build) costs a hash of
        its name, not of its inputs."""
        skey = stage_key(sid)
        shard = skey[:2]
        self._listing(shard)
        if skey not in self._keyed[shard]:
            return None
        name = f"{skey}-{inputs_key(fingerprint, deps)}"
        if name not in self._listing(shard):
            return None
        path = self.cache_dir / folder_rel(skey) / name
        try:
            return decode_entry(path.read_bytes())
        except (OSError, framing.OtherVersion):
            return None  # an entry of another version is replaced when the stage is recorded
        except ValueError as exc:
            path.unlink(missing_ok=True)
            self._listing(shard).discard(name)
            if self.notice is not None:
                shown = path.relative_to(self.cache_dir.parent.parent).as_posix()
                self.notice(f"{shown} (a run-cache entry of {sid.label()}): {exc}; removed it")
            return None

    def record(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord], outs: tuple[FileRecord, ...]) -> None:
        path = self._path(sid, fingerprint, deps)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        blob = encode_entry(outs)
        listed = self._listed.get(path.parent.name)
        if listed is not None:
            listed.add(path.name)  # (set.add: safe from the storer threads)
            self._keyed[path.parent.name].add(path.name.partition("-")[0])
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
