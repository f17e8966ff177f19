"""The up-to-date seal: proof, checked by `stat` alone, that stages are still up to date.

At the end of a build, every stage that is up to date (it ran, was restored,
or was already up to date) is sealed with the stamps of each file its
decision read: its deps and outs, every file and directory inside a directory
dep or out, and every directory a glob dep's expansion listed.  The seal also
names the compiled plan it holds for (the stages, commands and params as
compiled) and the hash of every pipeline's lockfile (the records the stages
were compared with), and it requires that no journal or pending results exist.

While all of that is unchanged, deciding a sealed stage again would read the
same records and the same hashes and say "up to date" again.  So a no-op
build checks stamps and nothing else, and a build with work to do skips the
sealed stages whose stamps still match without hashing anything.

Only stamps that prove something are sealed: a file's stamp as the stat
cache's trusted entry for it holds it, when that entry's hash is the one the
lockfile records (the stamp it had when it was hashed: a file changed since
does not have it, so its stage is decided the ordinary way), and a
directory's stamp when it is not racy.  A stage with anything else (a
symlink inside a directory output, a racy file) is simply left unsealed and
decided the ordinary way next time.

File: `<main pipeline>/.pivot/seal`: one frame (`state.framing`: magic
`PIVSEAL\n`, version FORMAT, checksum) of msgpack `[plan_id, [[lockfile,
hash]...], [must-be-absent...], table]`, the table of stamps packed for speed
(state/stamptable.py).  A damaged seal (`Damaged`) is reported once, removed
and ignored: the stages are decided the ordinary way; one of another format
version is ignored without a word.
"""

from __future__ import annotations

import os
import stat as statmod
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from pivotbuild.paths import STATE_DIR, joined
from pivotbuild.state import framing
from pivotbuild.state.hashing import ENTRY_LINK, ManifestEntry, hash_bytes, hash_file, manifest_bytes, walk_dir
from pivotbuild.state.kinds import DIR, FILE, GLOB
from pivotbuild.state.stamps import Stamp, is_racy, racy_wait_ns, stamp, stamp_now
from pivotbuild.state.stamptable import StampTable, apart, c_pass, changed_stamps, pack

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from pathlib import Path
    from threading import Thread

    from pivotbuild.state.records import FileRecord
    from pivotbuild.state.statcache import StatEntry

SEAL = "seal"
MAGIC = b"PIVSEAL\n"
FORMAT = 3  # 2: in a `state.framing` frame; 3: paths, stamps and stages packed
FRAME = framing.Format(MAGIC, FORMAT, "seal")
_FEW = 64  # stages: `holds` looks these up one by one in the packed table

# A seal that fails its checksum or does not decode; `str()` says why.
Damaged = framing.Damaged


def seal_path(main_dir: Path) -> Path:
    return main_dir / STATE_DIR / SEAL


def _seal_file(main_dir: str | Path) -> str:
    return os.path.join(main_dir, STATE_DIR, SEAL)


class Seal:
    """(A plain class: the no-op fast path does not import dataclasses.)

    A seal read from disk keeps its paths, stamps and stages packed as they
    were read (a `StampTable`) until something needs them one by one: the
    no-op of a whole project compares every stamp at once and never unpacks them."""

    def __init__(
        self,
        plan_id: str,
        locks: list[tuple[str, str]],
        absent: list[str],
        *,
        packed: StampTable | None = None,
    ) -> None:
        self.plan_id = plan_id
        self.locks = locks  # (lockfile path, XXH3-128 of its bytes, "" if absent)
        self.absent = absent  # journals and pending files, which must not exist
        self._packed = packed
        self._names: list[bytes] | None = None if packed else []  # the paths, as the file holds them
        self._stamps: list[Stamp | None] | None = None if packed else []
        self._stages: dict[int, list[int]] | None = None if packed else {}  # stage index -> path indices
        # A path may be sealed with different stamps by different stages (one
        # carried from an earlier build, one sealed now): key by both.  Built
        # by the first `add`: a seal that is only checked (the no-op) never needs it.
        self._at: dict[tuple[bytes, Stamp | None], int] | None = None
        self._paths_then = len(packed.names) if packed else 0  # paths when read or compacted (see `gathered`)
        self._early: tuple[Thread, list[list[int]]] | None = None  # a pass begun early (`look_early`): thread, answer

    @property
    def names(self) -> list[bytes]:
        """The paths as bytes (`os.fsencode`): as they are read and written,
        none decoded or encoded again but those a build adds."""
        if self._names is None:
            assert self._packed is not None
            self._names = list(self._packed.names)
        return self._names

    @property
    def paths(self) -> list[str]:
        return [os.fsdecode(name) for name in self.names]

    @property
    def stamps(self) -> list[Stamp | None]:
        if self._stamps is None:
            assert self._packed is not None
            self._stamps = self._packed.stamps()
        return self._stamps

    @property
    def stages(self) -> dict[int, list[int]]:
        if self._stages is None:
            assert self._packed is not None
            self._stages = self._packed.stage_map()
        return self._stages

    # -- checking -----------------------------------------------------------------

    def state_unchanged(self) -> bool:
        """The lockfiles hash as sealed, and no journal or pending file exists."""
        for path in self.absent:
            if os.path.lexists(path):
                return False
        for path, digest in self.locks:
            try:
                now = hash_file(path)
            except FileNotFoundError:
                now = ""
            except OSError:
                return False
            if now != digest:
                return False
        return True

    def holds(self, stages: Iterable[int]) -> bool:
        """Is every one of `stages` sealed, with every stamp unchanged now?
        (Statted afresh on every call: an answer is only as good as the moment
        it was given, and a build decides each stage when it becomes ready.)"""
        wanted = set(stages)
        packed = self._packed
        if packed is not None and self._stages is None and len(wanted) <= _FEW:
            return all(packed.holds(i) for i in wanted)  # (without unpacking the table)
        return self.holding(wanted) == wanted

    def holding(self, stages: Iterable[int], *, fork: bool = False) -> set[int]:
        """Those of `stages` that are sealed with every stamp unchanged now,
        each path statted once.  A seal as read, asked about every stage it
        seals, checks every path it holds in one pass (the fast path's one
        look at them, no-op or not: with `fork`, half in a forked child when
        large, see StampTable.changed)."""
        packed = self._packed
        stages = set(stages)
        if packed is not None and self._stages is None and stages >= packed.sealed_ids():
            # Every sealed stage, so every path the seal holds (it keeps only
            # paths some stage uses).
            changed = packed.changed(fork=fork)
            sealed = packed.sealed_ids()
            if not changed:
                return stages & sealed
            own_of = self.stages
            return {i for i in stages if (mine := own_of.get(i)) is not None and changed.isdisjoint(mine)}
        if packed is None and stages.issuperset(self.stages):
            # A seal made in this process (a build server's, kept between its
            # builds), asked about every stage it seals: every path it holds
            # in one pass, as above.
            moved = self._changed_now()
            own_of = self.stages
            if not moved:
                return set(own_of)
            return set(apart(own_of, moved, len(self.names)))
        own = {i: self.stages[i] for i in stages if i in self.stages}
        unchanged = dict(self._unchanged({j for js in own.values() for j in js}))
        return {i for i, js in own.items() if all(unchanged[j] for j in js)}

    def look_early(self) -> None:
        """Begin the pass over every path that `holding` makes, on a thread of
        its own (the C pass lets go of the GIL for its stats): a build server
        begins it as a build's request comes, and the build's fast check,
        asking about every stage, takes its answer once it needs it (the
        stats made meanwhile, while the request is taken in: the answer is as
        of the request, which came after whatever its client did before).
        Only for a seal made in this process, and where the C pass is built."""
        if self._packed is not None or self._early is not None or not c_pass():
            return
        import threading

        names, stamps, answer = self.names, self.stamps, []
        thread = threading.Thread(target=lambda: answer.append(changed_stamps(names, stamps)), name="stamps")
        thread.start()
        self._early = (thread, answer)

    def end_early(self) -> None:
        """Wait for an early pass no build took, and drop it."""
        early, self._early = self._early, None
        if early is not None:
            early[0].join()

    def _changed_now(self) -> list[int]:
        """The paths whose stamps are not as sealed: the early pass's answer if
        one was begun (once: a later call looks again), else a pass now."""
        early, self._early = self._early, None
        if early is not None:
            early[0].join()
            if early[1]:
                return early[1][0]
        return changed_stamps(self.names, self.stamps)

    def _unchanged(self, indices: Iterable[int]) -> Iterator[tuple[int, bool]]:
        """(path index, whether its stamp is as sealed) for each of `indices`,
        statted now, one by one."""
        names, stamps = self.names, self.stamps
        for j in indices:
            yield j, stamps[j] == stamp_now(names[j])

    # -- writing ------------------------------------------------------------------

    def add(self, index: int, files: Sequence[tuple[str, Stamp | None]]) -> None:
        """Seal stage `index` with these (path, stamp) pairs."""
        at = self._at
        names, stamps = self.names, self.stamps
        if at is None:  # (in C: the whole table, which an incremental build of many stages carries)
            at = self._at = dict(zip(zip(names, stamps, strict=True), range(len(names)), strict=True))
        own: list[int] = []
        for path, st in files:
            name = os.fsencode(path)
            k = at.get((name, st))
            if k is None:
                k = at[name, st] = len(names)
                names.append(name)
                stamps.append(st)
            own.append(k)
        self.stages[index] = own

    def renewed(self, plan_id: str, locks: list[tuple[str, str]], absent: list[str]) -> Seal:
        """A new seal for these lockfiles, holding every stage this one seals
        (each as this one sealed it) until `drop`ped or `add`ed again: what a
        build that decided a few stages of many writes, without carrying the
        others one by one."""
        new = Seal(plan_id, locks, absent)
        new._names = list(self.names)
        new._stamps = list(self.stamps)
        new._stages = dict(self.stages)
        new._at = None if self._at is None else dict(self._at)  # (a copy: not made again from every path)
        new._paths_then = self._paths_then
        return new

    def compacted(self) -> Seal:
        """This seal without the paths no stage uses any more: those of the
        stages dropped or sealed again since it was read or compacted (a seal
        renewed build after build, as a build server keeps it, gathers them)."""
        used = sorted({j for own in self.stages.values() for j in own})
        renumber = dict(zip(used, range(len(used)), strict=True))
        names, stamps = self.names, self.stamps
        new = Seal(self.plan_id, self.locks, self.absent)
        new._names = [names[j] for j in used]
        new._stamps = [stamps[j] for j in used]
        new._stages = {i: [renumber[j] for j in own] for i, own in self.stages.items()}
        new._paths_then = len(used)
        return new

    @property
    def gathered(self) -> bool:
        """Whether it holds many paths no stage uses (see `compacted`): a
        quarter more than it had when read or compacted."""
        return len(self.names) > self._paths_then + self._paths_then // 4 + 64

    def drop(self, index: int) -> None:
        """Stage `index` is no longer sealed."""
        self.stages.pop(index, None)

    def encode(self) -> bytes:
        """Only the paths some stage still uses are written (see `pack`)."""
        table = pack(self.names, self.stamps, self.stages)
        return FRAME.dump([self.plan_id, [list(x) for x in self.locks], self.absent, table])

    def write(self, main_dir: Path) -> None:
        from pivotbuild.state.files import write_atomic

        write_atomic(seal_path(main_dir), self.encode())


def read(main_dir: str | Path, plan_id: str) -> Seal | None:
    """The seal for this plan, if there is one; None if there is none or it is
    another plan's (the build decides the ordinary way).  Raises `Damaged` if
    it fails its checksum or its shape."""
    try:
        with open(_seal_file(main_dir), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        fields = FRAME.load(raw)
    except framing.OtherVersion:
        return None
    try:
        pid, locks, absent, table = fields
        if pid != plan_id:
            return None
        if not all(isinstance(p, str) for p in absent):
            raise ValueError("absent")
        return Seal(pid, [(str(p), str(h)) for p, h in locks], list(absent), packed=StampTable.unpack(table))
    except (ValueError, TypeError, AttributeError) as exc:
        raise Damaged(f"does not decode ({type(exc).__name__})") from exc


def remove(main_dir: str | Path) -> None:
    try:  # noqa: SIM105 (contextlib.suppress: an import the no-op spares)
        os.unlink(_seal_file(main_dir))
    except OSError:
        pass


# -- what a stage's decision read ----------------------------------------------------


class Unsealable(Exception):
    """Something about the stage cannot be proven by stamps alone."""


def stage_files(
    recorded: Iterable[FileRecord],
    root: Path,
    statcache: Mapping[str, StatEntry],
    now_ns: int,
    seen: dict[tuple[str, str], tuple[str, Stamp | None] | None] | None = None,
) -> list[tuple[str, Stamp | None]]:
    """The stamps that prove `recorded` (a stage's deps and outs, as its lockfile
    record has them) still hold, given the stage's stat cache entries (by
    absolute path).  Raises Unsealable.  `seen` carries each file's answer
    from one stage to the next of one sealing (an output is its consumers'
    dep: looked up once, not once per stage)."""
    found: list[tuple[str, Stamp | None]] = []
    memo = seen if seen is not None else {}
    for rec in recorded:
        _one(rec, root, statcache, now_ns, found=found, memo=memo)
    return found


def _one(
    rec: FileRecord,
    root: Path,
    trusted: Mapping[str, StatEntry],
    now_ns: int,
    *,
    found: list[tuple[str, Stamp | None]],
    memo: dict[tuple[str, str], tuple[str, Stamp | None] | None],
) -> None:
    if rec.kind == FILE:
        key = (rec.path, rec.hash)
        pair = memo.get(key)
        if pair is None:
            full = joined(root, rec.path)
            if key in memo:  # (None: not sealable)
                raise Unsealable(full)
            try:
                pair = memo[key] = (full, _file_stamp(full, rec.hash, trusted))
            except Unsealable:
                memo[key] = None
                raise
        found.append(pair)  # (the same pair for each stage that reads the file)
        return
    full = joined(root, rec.path)
    if rec.kind == DIR:
        found.extend(_waiting_once(lambda now: _dir_stamps(full, rec.hash, trusted, now), now_ns))
    elif rec.kind == GLOB:
        found.extend(_waiting_once(lambda now: _glob_stamps(root, rec, now), now_ns))
        for m in rec.matches:
            _one(m, root, trusted, now_ns, found=found, memo=memo)
    else:
        raise Unsealable(rec.path)


def _file_stamp(full: str, digest: str, trusted: Mapping[str, StatEntry]) -> Stamp:
    """The stamp of the file the stat cache hashed `digest` for, as its entry
    holds it: no `stat` (a file changed since no longer has that stamp, so
    the seal holds nothing for it: its stage is decided the ordinary way)."""
    entry = trusted.get(full)
    if entry is None or not entry.trusted or entry.hash != digest:
        raise Unsealable(full)
    return entry[:4]


def settled_stamp(full: str, now_ns: int) -> Stamp | None:
    """The stamp of `full` (a directory, or a file whose contents the stamp
    alone vouches for: a py: stage's source), None if it does not exist;
    Unsealable if it changed too recently for its stamp to prove anything."""
    try:
        st = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        raise Unsealable(full) from None
    if is_racy(st, now_ns):
        raise Unsealable(full)
    return stamp(st)


class _Racy(Unsealable):
    """A directory changed moments ago: its stamp proves nothing for `wait_ns` more."""

    def __init__(self, path: str, wait_ns: int) -> None:
        super().__init__(path)
        self.wait_ns = wait_ns


def _waiting_once(look: Callable[[int], list[tuple[str, Stamp | None]]], now_ns: int) -> list[tuple[str, Stamp | None]]:
    """`look(now_ns)`: the stamps of a directory output or of the directories
    a glob lists.  One of those directories that changed moments ago (the
    build just wrote into it) is waited for, for the rest of its racy window
    (a few ms on a local file system, at most 50 ms), and all of it looked
    at again, judged by a time taken before that second look: the end of a
    build no longer waits out the window otherwise (stamps.read_proves), and
    leaving the stage unsealed would cost the next no-op its fast path."""
    try:
        return look(now_ns)
    except _Racy as racy:
        time.sleep(racy.wait_ns / 1e9)
        return look(time.time_ns())


def _glob_stamps(root: Path, rec: FileRecord, now_ns: int) -> list[tuple[str, Stamp | None]]:
    """The stamps of the directories a glob dep's expansion lists, if it
    still matches what was recorded."""
    from pivotbuild import globs

    listed: list[str] = []
    matches = globs.expand(root, rec.path, listed)
    if matches != [m.path for m in rec.matches]:
        raise Unsealable(rec.path)
    return _settled_stamps(listed, now_ns)


def _settled_stamps(paths: list[str], now_ns: int) -> list[tuple[str, Stamp | None]]:
    """`settled_stamp` of each of `paths`, but a path that changed moments
    ago, whose window a wait sees out (`stamps.racy_wait_ns`: a few ms on a
    local file system, at most 50 ms), raises `_Racy` (once every path has
    been looked at: the longest such wait)."""
    found: list[tuple[str, Stamp | None]] = []
    wait_ns, racy = -1, ""  # (none racy)
    for path in paths:
        try:
            found.append((path, settled_stamp(path, now_ns)))
        except Unsealable:
            try:
                st = os.stat(path)
            except OSError:
                raise Unsealable(path) from None
            now = time.time_ns()
            wait = racy_wait_ns(st, now)  # (0: past already, or too long to wait)
            if not wait and is_racy(st, now):
                raise
            if wait > wait_ns:
                wait_ns, racy = wait, path
    if wait_ns >= 0:
        raise _Racy(racy, wait_ns)
    return found


def _dir_stamps(
    full: str, digest: str, trusted: Mapping[str, StatEntry], now_ns: int
) -> list[tuple[str, Stamp | None]]:
    dirs = []
    for dirpath, dirnames, _ in os.walk(full):
        dirs.append(dirpath)
        dirnames.sort()
    found = _settled_stamps(dirs, now_ns)
    entries = []
    try:
        listed = list(walk_dir(full))
    except OSError:  # (gone, or replaced by a file, since it was recorded: proves nothing)
        raise Unsealable(full) from None
    for rel, kind, st in listed:
        if kind == ENTRY_LINK or not statmod.S_ISREG(st.st_mode):
            raise Unsealable(rel)
        path = os.path.join(full, rel)
        entry = trusted.get(path)
        if entry is None or not entry.matches(st):
            raise Unsealable(path)
        found.append((path, stamp(st)))
        entries.append(ManifestEntry(rel, kind, entry.hash))
    if hash_bytes(manifest_bytes(entries)) != digest:
        raise Unsealable(full)
    return found
