"""The run cache: for each stage, the outputs it produced for each combination
of fingerprint and dep hashes it has seen.  A stage about to run with inputs
seen before is restored from the cache instead (status `restored`).

An entry is named `<stage key>-<inputs key>` and is one frame
(`state.framing`: magic `PIVRUN1\n`, version FORMAT, checksum) of msgpack
`{"outs": [...]}`; its folder is `ab`, the stage key's first two digits.
A build appends the entries it records to the log of sixteen folders,
`<cache>/runs/<a>.log` (`a`, the key's first digit): one frame each (magic
`PIVRUNL\n`) of msgpack `[name, entry]`, written with one `write` to a
file opened for appending.  So a cache holds sixteen logs at most, and a
project's first builds create sixteen files, not a file for each stage
they rerun: creating one costs 0.1 to 1 ms of the kernel's time on ext4
(0.6 ms on the benchmarks' machine), against a few microseconds for an
append.  What earlier versions wrote is read too: an entry as a file of
its own, `<cache>/runs/<ab>/<name>` (as `pull` still writes them and a
remote keeps them), and a log of one folder's entries, `runs/<ab>.log`
(never appended to now).  The sixteen-folder log wins over a folder's log,
and a log over a file of the same name; within a log the last frame of a
name wins (the newest result).  A build does not decode a log of
sixteen folders: it notes where each name's last frame is as it reads the
log (runlog.read_indexed: a frame's header and name, not its checksum;
a build server keeps what it read and reads only what was appended
since), and checks the frame it wants alone (runlog.entry_at), so a long
history costs a lookup a dictionary's, not a decode of every entry (gc
and push decode all).  A log whose last frame is cut short (or still
being appended) is searched instead: the last frame of the name in its
bytes (C's search, a few GB/s).

A reader never trusts a torn or damaged entry: one that fails its check is
ignored (the stage runs, or push skips it), said once, and removed (a log
is written again without it, under its lock: runlog.py); an entry of
another format version is a miss, without a word, and is replaced when the
stage is recorded.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pivotbuild.cache import runlog
from pivotbuild.model import StageId
from pivotbuild.state import codec, framing
from pivotbuild.state.hashing import hash_bytes
from pivotbuild.state.records import FileRecord
from pivotbuild.state.snapshot import json_text

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


def log_rel(shard: str) -> str:
    """The log that folder `shard`'s entries are appended to (the log of the
    sixteen folders beginning with its first digit), relative to the cache
    directory."""
    return f"{RUNS}/{shard[:1]}.log"


def folder_log_rel(shard: str) -> str:
    """Folder `shard`'s own log, as earlier versions wrote (read, never appended to)."""
    return f"{RUNS}/{shard}.log"


def of_stage(skey: str, names: Iterable[str]) -> list[str]:
    """Those of `names` (in the stage's folder) that are the stage's entries, sorted."""
    prefix = f"{skey}-"
    return sorted(n for n in names if n.startswith(prefix))


def inputs_key(fingerprint: str, deps: Sequence[FileRecord]) -> str:
    listed = [(d.path, d.kind, d.hash) for d in deps]
    return hash_bytes(json_text([fingerprint, listed]).encode("utf-8", "surrogateescape"))


class _Log:
    """A log of sixteen folders as one RunCache read it: its bytes, where a
    name looked up is found (`blob`; b"" once it was decoded whole), by
    the index of its frames' names where it covers them all (`index`,
    else a search), and the entries checked since, decoded or appended by
    this RunCache (`known`, which wins), with their stage keys."""

    __slots__ = ("blob", "index", "keys", "known")

    def __init__(
        self, blob: bytes = b"", known: dict[str, bytes] | None = None, index: runlog.Indexed | None = None
    ) -> None:
        self.blob = blob
        self.index = index
        self.known: dict[str, bytes] = known or {}
        self.keys = {n.partition("-")[0] for n in self.known}

    def _covering(self) -> runlog.Indexed | None:
        """The index, if it stands for every frame of `blob` (else `blob` is searched)."""
        index = self.index
        return index if index is not None and index.covers(self.blob) else None

    def has(self, skey: str) -> bool:
        """Whether the log may hold an entry of the stage of key `skey`."""
        if skey in self.keys or not self.blob:
            return skey in self.keys
        index = self._covering()
        return skey in index.skeys if index is not None else skey.encode() in self.blob

    def frame_of(self, name: str) -> int | None:
        """Where the last frame naming `name` may start in `blob` (runlog.frame_of)."""
        index = self._covering()
        return index.frames.get(name) if index is not None else runlog.frame_of(self.blob, name)


class RunCache:
    """One build's (or command's) view of the run cache.  Each folder (and
    its logs) is read once, on its first lookup, and misses are answered from
    that (plus what this object records): a clean build would otherwise
    try to open a missing entry for every stage.  An entry another process
    adds meanwhile may be missed: the stage then runs, as it would have a
    moment earlier.  Thread-safe: a build's storer threads record while its
    loop looks up.  `repair=False` (gc -n) reads without writing anything."""

    def __init__(
        self,
        cache_dir: Path,
        notice: Callable[[str], None] | None = None,
        *,
        repair: bool = True,
        deferred: bool = False,
    ) -> None:
        """`deferred`: what `record` appends is written by `flush` (a build's
        run cache, flushed when the build ends: one append a log, not one a
        stage)."""
        self.cache_dir = cache_dir
        self.notice = notice  # told once about each damaged entry
        self.repair = repair
        self._runs = f"{cache_dir}/{RUNS}"
        self._lock = threading.RLock()
        self._made = False  # runs/ made by this object
        self._there: set[str] = set()  # logs (their letters) `logged` found (one missing is asked again)
        self._shards: set[str] | None = None  # the names under runs/, once listed
        self._listed: dict[str, set[str]] = {}  # folder name -> the entries in it (files), once listed
        self._logged: dict[str, dict[str, bytes]] = {}  # folder name -> its own log's entries, once read
        self._keyed: dict[str, set[str]] = {}  # folder name -> the stage keys of its files and own log
        self._logs: dict[str, _Log] = {}  # first digit -> its log, once read
        self._deferred = deferred
        self._unwritten: dict[str, list[tuple[str, bytes]]] = {}  # log path -> entries `flush` appends

    def _listing(self, shard: str) -> set[str]:
        """The entries of folder `shard` that are files, read once with the
        folder's own log and the log of its sixteen (see the module's
        docstring); runs/ itself is listed once too, so a folder that does
        not exist (most of them, in a first build) costs no system call."""
        names = self._listed.get(shard)
        if names is not None:
            return names
        # Read without the lock: the build's loop looks up while a storer
        # thread lists another folder or appends to a log (a new one is a
        # file created: 0.3 to 0.6 ms here), and must not wait for it.  Should
        # two threads list the same folder at once, the first view kept stands.
        shards = self._runs_listed()
        found: set[str] = set()
        if shard in shards:
            with contextlib.suppress(OSError):
                found = set(os.listdir(f"{self._runs}/{shard}"))
        logged: dict[str, bytes] = {}
        if f"{shard}.log" in shards:
            logged = self._read_log(folder_log_rel(shard))
        group = shard[:1]
        log = self._logs.get(group) or self._read_group(group, f"{group}.log" in shards)
        with self._lock:
            names = self._listed.get(shard)
            if names is not None:
                return names
            self._logs.setdefault(group, log)
            self._keyed[shard] = {n.partition("-")[0] for n in (*found, *logged)}
            self._logged[shard] = logged
            self._listed[shard] = found  # (last: the check above reads it without the lock)
            return found

    def _runs_listed(self) -> set[str]:
        """The names under runs/, listed once."""
        shards = self._shards
        if shards is None:
            with self._lock:
                if self._shards is None:
                    try:
                        self._shards = set(os.listdir(self._runs))
                    except OSError:  # none yet (or unreadable: then every lookup misses, as before)
                        self._shards = set()
                shards = self._shards
        return shards

    def _read_group(self, group: str, listed: bool) -> _Log:
        """The log of the sixteen folders beginning with `group`, as bytes
        to search (see the module's docstring)."""
        if not listed:
            return _Log()
        read = runlog.read_indexed(self._log(group))  # (a server's builds: only what was appended since)
        return _Log() if read is None else _Log(read.blob, index=read)

    def _read_log(self, rel: str) -> dict[str, bytes]:
        path = f"{self.cache_dir}/{rel}"
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError:
            return {}
        logged, damaged, _ = runlog.read_log(blob)
        # (Or a frame still being appended: read again under the log's lock, to tell.)
        return self._rewritten(rel) if damaged else logged

    def _rewritten(self, rel: str) -> dict[str, bytes]:
        """The entries of the log at `rel`, read again under its lock, and
        written again without its damaged frames (said once)."""
        logged, damaged = runlog.rewrite(f"{self.cache_dir}/{rel}", write=self.repair)
        if damaged:
            what = "a damaged or torn entry" if damaged == 1 else f"{damaged} damaged or torn entries"
            done = "removed" if self.repair else "skipped"
            self._say(rel, f": {what} (cut short by a killed build, or damaged on disk); {done}")
        return logged

    def _grouped(self, shard: str, name: str) -> bytes | None:
        """The entry `name` (of folder `shard`) in the log of its sixteen,
        its frame checked (the log read whole and repaired if it fails)."""
        group = shard[:1]
        with self._lock:
            log = self._logs[group]
            found = log.known.get(name)
            if found is not None or not log.blob:
                return found
            pos = log.frame_of(name)
            if pos is None:
                return None
            try:
                found = log.known[name] = runlog.entry_at(log.blob, pos, name)
                return found
            except framing.Damaged:  # (or the name found elsewhere than a frame's name)
                log = self._logs[group] = self._repaired(group)
                return log.known.get(name)

    def _logged_entry(self, shard: str, name: str) -> bytes | None:
        """Entry `name` of folder `shard` in a log: the sixteen's, else the folder's own."""
        return self._grouped(shard, name) or self._logged[shard].get(name)

    def _repaired(self, group: str) -> _Log:
        """The log of `group`, read again whole under its lock (repaired)."""
        return _Log(known=self._rewritten(log_rel(group)))

    def _logged_in(self, shard: str) -> dict[str, bytes]:
        """Folder `shard`'s entries in logs (its own, then its sixteen's), each checked."""
        group = shard[:1]
        with self._lock:
            log = self._logs[group]
            if log.blob:  # decoded whole once (gc and push read every entry)
                entries, damaged, _ = runlog.read_log(log.blob)
                if damaged:  # (see _read_log)
                    log = self._logs[group] = self._repaired(group)
                else:
                    log.known = {**entries, **log.known}
                    log.keys |= {n.partition("-")[0] for n in entries}
                    log.blob, log.index = b"", None
            return {**self._logged[shard], **{n: b for n, b in log.known.items() if n.startswith(shard)}}

    def entries(self, skey: str, *, shadowed: bool = False) -> list[tuple[str, bytes]]:
        """The entries (name, bytes) of the stage of key `skey`, or with a
        folder's name, all of that folder's, sorted by name; an entry file
        that cannot be read is left out.  With `shadowed`, also the file of
        a name a log holds too (gc: both name objects)."""
        shard = skey[:2]
        names = self._listing(shard)
        logged = self._logged_in(shard)
        found = []
        for name in sorted({*names, *logged}) if skey == shard else of_stage(skey, {*names, *logged}):
            blob = logged.get(name)
            if blob is not None:
                found.append((name, blob))
            if blob is None or (shadowed and name in names):
                try:
                    found.append((name, Path(f"{self._runs}/{shard}/{name}").read_bytes()))
                except OSError:
                    continue  # replaced by a build meanwhile
        return found

    def lookup(self, sid: StageId, fingerprint: str, deps: Sequence[FileRecord]) -> tuple[FileRecord, ...] | None:
        """The outputs recorded for exactly these inputs, if any.  A damaged
        entry is reported and removed (so it is reported once).  A stage
        with no entry at all (every stage of a first build) costs a hash of
        its name, not of its inputs; where the run cache holds nothing at all
        (a project's first build), not even that."""
        if not self._made and not self._runs_listed():
            return None
        skey = stage_key(sid)
        shard = skey[:2]
        names = self._listing(shard)
        if skey not in self._keyed[shard] and not self._logs[shard[:1]].has(skey):
            return None
        name = f"{skey}-{inputs_key(fingerprint, deps)}"
        found = self._logged_entry(shard, name)
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
                if self.repair:
                    Path(f"{self._runs}/{shard}/{name}").unlink(missing_ok=True)
                with self._lock:
                    names.discard(name)
            else:
                self._drop_logged(shard, {name}, blob)
            return None

    def record(
        self,
        sid: StageId,
        fingerprint: str,
        deps: Sequence[FileRecord],
        outs: tuple[FileRecord, ...],
        *,
        create: bool = True,
    ) -> None:
        """Append the entry to its log (unless the same is there).  Without
        `create`, no directory is made for it (`flush(create=False)`)."""
        skey = stage_key(sid)
        shard = skey[:2]
        name = f"{skey}-{inputs_key(fingerprint, deps)}"
        blob = encode_entry(outs)
        self._listing(shard)
        with self._lock:
            if self._logged_entry(shard, name) == blob:
                return  # recorded already (by an earlier build)
            if not self._made and create:
                os.makedirs(self._runs, exist_ok=True)
                self._made = True
        # (The append outside the lock: see `_listing`.  A frame is whole once
        # written, under the log's own lock; the same entry appended twice at
        # once is read as one.)
        path = self._log(shard)
        if not self._deferred:
            runlog.append(path, name, blob, create=create)
        with self._lock:
            if self._deferred:
                self._unwritten.setdefault(path, []).append((name, blob))
            log = self._logs[shard[:1]]
            log.known[name] = blob
            log.keys.add(skey)

    def flush(self, *, create: bool = True) -> None:
        """Append what `record` left to write (deferred), one `write` a log.
        Entries a build killed before this loses only cost a restore: the
        lockfile holds each stage's last record, and its outputs are in the
        cache (see OutputCache.restore).  Without `create`, only to logs that
        exist: the others' entries are dropped (a build server's, after its
        answer: a project removed meanwhile is not made again, OutputCache.
        close_runs)."""
        with self._lock:
            unwritten, self._unwritten = self._unwritten, {}
        for path, entries in sorted(unwritten.items()):
            runlog.append_many(path, entries, create=create)

    def logged(self, sid: StageId) -> bool:
        """Whether the log `sid`'s entries go to exists (once found, not asked
        again; a missing one is, as a build may make it)."""
        group = stage_key(sid)[:1]
        if group in self._there:
            return True
        if not os.path.exists(self._log(group)):
            return False
        self._there.add(group)
        return True

    def remove(self, shard: str, names: set[str]) -> None:
        """Remove these entries of folder `shard`, from the logs and as files (gc)."""
        self._listing(shard)
        self._drop_logged(shard, names)
        for name in names:
            Path(f"{self._runs}/{shard}/{name}").unlink(missing_ok=True)

    def shards(self) -> list[str]:
        """The folders that hold entries (files or logs), sorted: the sixteen
        of a log of sixteen, whether it holds entries of each or not."""
        try:
            names = os.listdir(self._runs)
        except OSError:
            return []
        found = set()
        for n in names:
            base = n.removesuffix(".log")
            if len(base) == 2:
                found.add(base)
            elif len(base) == 1 and base != n:
                found.update(base + digit for digit in "0123456789abcdef")
        return sorted(found)

    def _drop_logged(self, shard: str, names: set[str], only: bytes | None = None) -> None:
        """Drop `names` from the folder's logs (with `only`, a name only while it
        still holds those bytes: a newer frame of it stays)."""

        def drop(entries: dict[str, bytes]) -> bool:
            gone = [n for n in names if n in entries and (only is None or entries[n] == only)]
            for n in gone:
                del entries[n]
            return bool(gone)

        with self._lock:
            if f"{shard}.log" in self._runs_listed():
                logged, _ = runlog.rewrite(f"{self.cache_dir}/{folder_log_rel(shard)}", drop, write=self.repair)
                if not self.repair:
                    logged = {n: b for n, b in self._logged.get(shard, {}).items() if n not in names}
                self._logged[shard] = logged
            group = shard[:1]
            logged, _ = runlog.rewrite(self._log(group), drop, write=self.repair)  # (without writing: as it would be)
            self._logs[group] = _Log(known=logged)

    def _log(self, shard: str) -> str:
        """The path of the log that folder `shard`'s entries are appended to."""
        return f"{self.cache_dir}/{log_rel(shard)}"

    def _say(self, rel: str, what: str) -> None:
        if self.notice is not None:
            shown = (self.cache_dir / rel).relative_to(self.cache_dir.parent.parent).as_posix()
            self.notice(f"{shown}{what}")
