"""The run cache: for each stage, the outputs it produced for each combination
of fingerprint and dep hashes it has seen.  A stage about to run with inputs
seen before is restored from the cache instead (status `restored`).

An entry is named `<stage key>-<inputs key>` and is one frame
(`state.framing`: magic `PIVRUN1\n`, version FORMAT, checksum) of msgpack
`{"outs": [...]}`.  A build appends the entries it records to its shard's
log, `<cache>/runs/<ab>.log` (`ab` begins the stage key): one frame each
(magic `PIVRUNL\n`) of msgpack `[name, entry]`, written with one `write` to
a file opened for appending.  An entry used to be a file of its own,
`<cache>/runs/<ab>/<name>`, as `pull` still writes them and a remote keeps
them: creating a file cost 0.1 to 1 ms of the kernel's time on ext4 (most
after deletions, which every rebuild makes), a sixth of an incremental
build of 55 small stages; an append costs a `write`.  Both are read: a
log's entry wins over a file of the same name, and within a log the last
frame of a name wins (the newest result).

A reader never trusts a torn or damaged entry: one that fails its check is
ignored (the stage runs, or push skips it), said once, and removed (a log
is written again without it); an entry of another format version is a
miss, without a word, and is replaced when the stage is recorded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pivotbuild.model import StageId
from pivotbuild.state import codec, framing
from pivotbuild.state.files import write_atomic
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.records import FileRecord

RUNS = "runs"
MAGIC = b"PIVRUN1\n"
FORMAT = 2  # 2: in a `state.framing` frame
FRAME = framing.Format(MAGIC, FORMAT, "run-cache entry")
LOG_MAGIC = b"PIVRUNL\n"
LOG = framing.Format(LOG_MAGIC, 1, "run-cache log entry")


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


def log_rel(shard: str) -> str:
    """The log of folder `shard`'s entries, relative to the cache directory."""
    return f"{RUNS}/{shard}.log"


def read_log(blob: bytes) -> tuple[dict[str, bytes], int]:
    """A log's entries, name -> entry (the last frame of a name wins), and how
    many frames were torn or damaged (each skipped: reading goes on at the
    next frame's magic)."""
    entries: dict[str, bytes] = {}
    damaged = pos = 0
    while pos < len(blob):
        try:
            end = LOG.check(blob, pos)
            name, entry = LOG.loads(blob[pos + framing.HEADER.size : end])
            if not isinstance(name, str) or not isinstance(entry, bytes):
                raise framing.Damaged("not a name and an entry")
        except (framing.Damaged, ValueError, TypeError):
            damaged += 1
            found = blob.find(LOG_MAGIC, pos + 1)
            pos = len(blob) if found < 0 else found
            continue
        entries[name] = entry
        pos = end + framing.CHECKSUM
    return entries, damaged


def log_bytes(entries: dict[str, bytes]) -> bytes:
    return b"".join(LOG.dump([name, entry]) for name, entry in entries.items())


def of_stage(skey: str, names: Iterable[str]) -> list[str]:
    """Those of `names` (in the stage's folder) that are the stage's entries, sorted."""
    prefix = f"{skey}-"
    return sorted(n for n in names if n.startswith(prefix))


def inputs_key(fingerprint: str, deps: Sequence[FileRecord]) -> str:
    listed = [(d.path, d.kind, d.hash) for d in deps]
    return hash_bytes(json.dumps([fingerprint, listed]).encode("utf-8", "surrogateescape"))


class RunCache:
    """One build's (or command's) view of the run cache.  Each folder (and
    its log) is read once, on its first lookup, and misses are answered from
    that (plus what this object records): a clean build would otherwise
    try to open a missing entry for every stage.  An entry another process
    adds meanwhile may be missed: the stage then runs, as it would have a
    moment earlier."""

    def __init__(self, cache_dir: Path, notice: Callable[[str], None] | None = None) -> None:
        self.cache_dir = cache_dir
        self.notice = notice  # told once about each damaged entry
        self._runs = f"{cache_dir}/{RUNS}"
        self._made = False  # runs/ made by this object
        self._shards: set[str] | None = None  # the names under runs/, once listed
        self._listed: dict[str, set[str]] = {}  # folder name -> the entries in it (files), once listed
        self._logged: dict[str, dict[str, bytes]] = {}  # folder name -> its log's entries, once read
        self._keyed: dict[str, set[str]] = {}  # folder name -> the stage keys its entries begin with

    def _listing(self, shard: str) -> set[str]:
        """The entries of folder `shard`, files and log (see the module's
        docstring), read once; runs/ itself is listed once too, so a folder
        that does not exist (most of them, in a first build) costs no
        system call."""
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
            logged: dict[str, bytes] = {}
            if f"{shard}.log" in self._shards:
                logged = self._read_log(shard)
            self._keyed[shard] = {n.partition("-")[0] for n in (*names, *logged)}
            self._logged[shard] = logged
            self._listed[shard] = names  # (last: `record` adds to these once this is set)
        return names

    def _read_log(self, shard: str) -> dict[str, bytes]:
        path = f"{self._runs}/{shard}.log"
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError:
            return {}
        logged, damaged = read_log(blob)
        if damaged:
            what = "a damaged or torn entry" if damaged == 1 else f"{damaged} damaged or torn entries"
            self._say(f"{RUNS}/{shard}.log", f": {what} (cut short by a killed build, or damaged on disk); removed")
            self._rewrite(shard, logged)
        return logged

    def entries(self, skey: str) -> list[tuple[str, bytes]]:
        """The entries (name, bytes) of the stage of key `skey`, or with a
        folder's name, all of that folder's, sorted by name; an entry file
        that cannot be read is left out."""
        shard = skey[:2]
        names = self._listing(shard)
        logged = self._logged[shard]
        every = {*names, *logged}
        found = []
        for name in sorted(every) if skey == shard else of_stage(skey, every):
            blob = logged.get(name)
            if blob is None:
                try:
                    blob = Path(f"{self._runs}/{shard}/{name}").read_bytes()
                except OSError:
                    continue  # replaced by a build meanwhile
            found.append((name, blob))
        return found

    def lookup(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> tuple[FileRecord, ...] | None:
        """The outputs recorded for exactly these inputs, if any.  A damaged
        entry is reported and removed (so it is reported once).  A stage
        with no entry at all (every stage of a first build) costs a hash of
        its name, not of its inputs."""
        skey = stage_key(sid)
        shard = skey[:2]
        names = self._listing(shard)
        if skey not in self._keyed[shard]:
            return None
        name = f"{skey}-{inputs_key(fingerprint, deps)}"
        logged = self._logged[shard]
        found = logged.get(name)
        in_file = found is None
        if found is None:
            if name not in names:
                return None
            try:
                found = Path(f"{self._runs}/{shard}/{name}").read_bytes()
            except OSError:
                return None
        blob: bytes = found
        try:
            return decode_entry(blob)
        except framing.OtherVersion:
            return None  # an entry of another version is replaced when the stage is recorded
        except ValueError as exc:
            self._say(f"{RUNS}/{shard}/{name}", f" (a run-cache entry of {sid.label()}): {exc}; removed it")
            if in_file:
                Path(f"{self._runs}/{shard}/{name}").unlink(missing_ok=True)
                names.discard(name)
            else:
                del logged[name]
                self._rewrite(shard, logged)
            return None

    def record(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord], outs: tuple[FileRecord, ...]) -> None:
        """Append the entry to its folder's log (unless the same is there)."""
        skey = stage_key(sid)
        shard = skey[:2]
        name = f"{skey}-{inputs_key(fingerprint, deps)}"
        blob = encode_entry(outs)
        self._listing(shard)
        logged = self._logged[shard]
        if logged.get(name) == blob:
            return  # recorded already (by an earlier build)
        if not self._made:
            os.makedirs(self._runs, exist_ok=True)
            self._made = True
        frame = LOG.dump([name, blob])
        fd = os.open(f"{self._runs}/{shard}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            if os.write(fd, frame) != len(frame):  # (a full disk: a torn frame, which readers skip)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            os.close(fd)
        logged[name] = blob  # (dict and set updates: safe from the storer threads)
        self._keyed[shard].add(skey)

    def remove(self, shard: str, names: set[str]) -> None:
        """Remove these entries of folder `shard` (gc)."""
        self._listing(shard)
        logged = self._logged[shard]
        if names & logged.keys():
            self._rewrite(shard, {n: b for n, b in logged.items() if n not in names})
        for name in names - logged.keys():
            Path(f"{self._runs}/{shard}/{name}").unlink(missing_ok=True)

    def shards(self) -> list[str]:
        """The folders that hold entries (files or a log), sorted."""
        try:
            names = os.listdir(self._runs)
        except OSError:
            return []
        return sorted({n.removesuffix(".log") for n in names if len(n.removesuffix(".log")) == 2})

    def _rewrite(self, shard: str, logged: dict[str, bytes]) -> None:
        """The log of `shard` holding `logged` alone (an append made meanwhile
        by another process is lost: a miss later, never a wrong result)."""
        self._logged[shard] = logged
        path = Path(f"{self._runs}/{shard}.log")
        with contextlib.suppress(OSError):
            if logged:
                write_atomic(path, log_bytes(logged), fsync=False)
            else:
                path.unlink(missing_ok=True)

    def _say(self, rel: str, what: str) -> None:
        if self.notice is not None:
            shown = (self.cache_dir / rel).relative_to(self.cache_dir.parent.parent).as_posix()
            self.notice(f"{shown}{what}")
