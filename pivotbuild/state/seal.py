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

Only stamps that prove something are sealed: a file's stamp when the stat
cache holds a trusted entry for exactly that stamp whose hash is the one the
lockfile records, and a directory's stamp when it is not racy.  A stage with
anything else (a symlink inside a directory output, a racy file) is simply
left unsealed and decided the ordinary way next time.

File: `<main pipeline>/.pivot/seal`: one frame (`state.framing`: magic
`PIVSEAL\n`, version FORMAT, checksum) of msgpack `[plan_id, [[lockfile,
hash]...], [must-be-absent...], [paths, stamps, absent paths, stage indices,
offsets, members]]`, the last packed for speed (see `_Packed`).  A damaged seal (`Damaged`) is reported once, removed
and ignored: the stages are decided the ordinary way; one of another format
version is ignored without a word.
"""

from __future__ import annotations

import os
import stat as statmod
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from operator import attrgetter

from pivotbuild.paths import STATE_DIR
from pivotbuild.state import framing
from pivotbuild.state.hashing import ENTRY_LINK, ManifestEntry, hash_bytes, hash_file, manifest_bytes, walk_dir
from pivotbuild.state.kinds import DIR, FILE, GLOB
from pivotbuild.state.stamps import Stamp, is_racy, stamp

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from pathlib import Path

    from pivotbuild.state.records import FileRecord
    from pivotbuild.state.statcache import StatEntry

SEAL = "seal"
MAGIC = b"PIVSEAL\n"
FORMAT = 3  # 2: in a `state.framing` frame; 3: paths, stamps and stages packed
FRAME = framing.Format(MAGIC, FORMAT, "seal")

# A seal that fails its checksum or does not decode; `str()` says why.
Damaged = framing.Damaged


def seal_path(main_dir: Path) -> Path:
    return main_dir / STATE_DIR / SEAL


def _seal_file(main_dir: str | Path) -> str:
    return os.path.join(main_dir, STATE_DIR, SEAL)


class Seal:
    """(A plain class: the no-op fast path does not import dataclasses.)

    A seal read from disk keeps its paths, stamps and stages packed as they
    were read (`_Packed`) until something needs them one by one: the no-op
    of a whole project compares every stamp at once and never unpacks them."""

    def __init__(
        self,
        plan_id: str,
        locks: list[tuple[str, str]],
        absent: list[str],
        *,
        packed: _Packed | None = None,
    ) -> None:
        self.plan_id = plan_id
        self.locks = locks  # (lockfile path, XXH3-128 of its bytes, "" if absent)
        self.absent = absent  # journals and pending files, which must not exist
        self._packed = packed
        self._paths: list[str] | None = None if packed else []
        self._stamps: list[Stamp | None] | None = None if packed else []
        self._stages: dict[int, list[int]] | None = None if packed else {}  # stage index -> path indices
        # A path may be sealed with different stamps by different stages (one
        # carried from an earlier build, one sealed now): key by both.  Built
        # by the first `add`: a seal that is only checked (the no-op) never needs it.
        self._at: dict[tuple[str, Stamp | None], int] | None = None

    @property
    def paths(self) -> list[str]:
        if self._paths is None:
            assert self._packed is not None
            self._paths = [os.fsdecode(p) for p in self._packed.names]
        return self._paths

    @property
    def stamps(self) -> list[Stamp | None]:
        if self._stamps is None:
            assert self._packed is not None
            flat, gone = self._packed.flat, set(self._packed.missing)
            self._stamps = [
                None if j in gone else (flat[4 * j], flat[4 * j + 1], flat[4 * j + 2], flat[4 * j + 3])
                for j in range(len(self._packed.names))
            ]
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
        packed = self._packed
        if packed is not None and self._stages is None:
            wanted_all = set(stages)
            if wanted_all == packed.sealed_ids():
                # Every sealed stage, so every path the seal holds (it keeps
                # only paths some stage uses): one pass, compared all at once.
                return not packed.changed()
            if not wanted_all <= packed.sealed_ids():
                return False
            stages = wanted_all
        wanted: set[int] = set()
        own_of = self.stages
        for i in stages:
            own = own_of.get(i)
            if own is None:
                return False
            wanted.update(own)
        return all(same for _, same in self._unchanged(wanted))

    def holding(self, stages: Iterable[int]) -> set[int]:
        """Those of `stages` that are sealed with every stamp unchanged now,
        each path statted once.  (A seal as read checks every path it holds
        in one pass: the fast path's one look at them, no-op or not.)"""
        packed = self._packed
        stages = set(stages)
        if packed is not None and self._stages is None and stages >= packed.sealed_ids():
            # Every sealed stage, so every path the seal holds (it keeps only
            # paths some stage uses): one pass (and a forked helper when large).
            changed = packed.changed(fork=True)
            sealed = packed.sealed_ids()
            if not changed:
                return stages & sealed
            own_of = self.stages
            return {i for i in stages if (mine := own_of.get(i)) is not None and changed.isdisjoint(mine)}
        own = {i: self.stages[i] for i in stages if i in self.stages}
        unchanged = dict(self._unchanged({j for js in own.values() for j in js}))
        return {i for i, js in own.items() if all(unchanged[j] for j in js)}

    def _unchanged(self, indices: Iterable[int]) -> Iterator[tuple[int, bool]]:
        """(path index, whether its stamp is as sealed) for each of `indices`,
        statted now, one by one (a caller may stop at the first change)."""
        paths, stamps, stat = self.paths, self.stamps, os.stat
        for j in indices:
            try:
                st = stat(paths[j])
            except (FileNotFoundError, NotADirectoryError):
                yield j, stamps[j] is None
                continue
            except OSError:
                yield j, False
                continue
            yield j, stamps[j] == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    # -- writing ------------------------------------------------------------------

    def add(self, index: int, files: Sequence[tuple[str, Stamp | None]]) -> None:
        """Seal stage `index` with these (path, stamp) pairs."""
        at = self._at
        paths, stamps = self.paths, self.stamps
        if at is None:
            at = self._at = {(p, st): k for k, (p, st) in enumerate(zip(paths, stamps, strict=True))}
        own: list[int] = []
        for path, st in files:
            k = at.get((path, st))
            if k is None:
                k = at[path, st] = len(paths)
                paths.append(path)
                stamps.append(st)
            own.append(k)
        self.stages[index] = own

    def carry(self, old: Seal, index: int) -> None:
        """Seal stage `index` as `old` sealed it."""
        own = old.stages.get(index)
        if own is not None:
            self.add(index, [(old.paths[j], old.stamps[j]) for j in own])

    def renewed(self, plan_id: str, locks: list[tuple[str, str]], absent: list[str]) -> Seal:
        """A new seal for these lockfiles, holding every stage this one seals
        (each as this one sealed it) until `drop`ped or `add`ed again: what a
        build that decided a few stages of many writes, without carrying the
        others one by one."""
        new = Seal(plan_id, locks, absent)
        new._paths = list(self.paths)
        new._stamps = list(self.stamps)
        new._stages = dict(self.stages)
        return new

    def drop(self, index: int) -> None:
        """Stage `index` is no longer sealed."""
        self.stages.pop(index, None)

    def encode(self) -> bytes:
        """Only the paths some stage still uses are written, packed (see `_Packed`)."""
        used = sorted({j for own in self.stages.values() for j in own})
        renumber = {j: k for k, j in enumerate(used)}
        names = b"\0".join(os.fsencode(self.paths[j]) for j in used)
        flat: list[int] = []
        missing: list[int] = []
        for k, j in enumerate(used):
            st = self.stamps[j]
            if st is None:
                missing.append(k)
                flat.extend((0, 0, 0, 0))
            else:
                flat.extend(st)
        ids = sorted(self.stages)
        offsets = [0]
        members: list[int] = []
        for i in ids:
            members.extend(renumber[j] for j in self.stages[i])
            offsets.append(len(members))
        return FRAME.dump(
            [
                self.plan_id,
                [list(x) for x in self.locks],
                self.absent,
                [names, flat, missing, _pack_u32(ids), _pack_u32(offsets), _pack_u32(members)],
            ]
        )

    def write(self, main_dir: Path) -> None:
        from pivotbuild.state.files import write_atomic

        write_atomic(seal_path(main_dir), self.encode())


class _Packed:
    """A seal's paths, stamps and stages as stored: the paths as one
    NUL-separated byte string (`names`, split once), the stamps as one flat
    list of ints (four per path; zeros for a path sealed as absent, listed in
    `missing`), and the sealed stages as three little-endian uint32 arrays:
    their indices, offsets into `members`, and members (path indices).  At
    10,000 stages this reads in a few milliseconds where a list of tuples
    per path took fifteen."""

    __slots__ = ("_ids", "flat", "ids", "members", "missing", "names", "offsets")

    def __init__(
        self,
        names: list[bytes],
        flat: list[int],
        missing: list[int],
        *,
        ids: array[int],
        offsets: array[int],
        members: array[int],
    ) -> None:
        self.names = names
        self.flat = flat
        self.missing = missing
        self.ids = ids
        self.offsets = offsets
        self.members = members
        self._ids: set[int] | None = None

    def sealed_ids(self) -> set[int]:
        if self._ids is None:
            self._ids = set(self.ids)
        return self._ids

    def stage_map(self) -> dict[int, list[int]]:
        offsets, members = self.offsets, self.members
        return {i: list(members[offsets[k] : offsets[k + 1]]) for k, i in enumerate(self.ids)}

    def changed(self, *, fork: bool = False) -> set[int]:
        """The paths whose stamp is not as sealed, statted now.

        The stats are the whole cost (3 us each here: 60 ms at 10,000 stages)
        and threads cannot share them (each stat retakes the GIL), so with
        `fork` a large seal is checked half here and half in a forked child,
        as git preloads its index on several threads: only for the fast
        path's look (`holding`), before the engine starts, and only where
        this process has no other thread (a fork copies just the caller)."""
        n = len(self.names)
        if not fork or n < _FORK_ABOVE or not _forkable():
            return set(self._changed(0, n))
        half = n // 2
        try:
            r, w = os.pipe()
        except OSError:
            return set(self._changed(0, n))
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return set(self._changed(0, n))
        if pid == 0:  # the child: its half's changes down the pipe, and nothing else
            code = 2
            try:
                os.close(r)
                data = _pack_u32(self._changed(half, n))
                while data:
                    data = data[os.write(w, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        status = -1
        try:
            with open(r, "rb") as pipe:
                found = self._changed(0, half)
                theirs = pipe.read()
        except OSError:
            pass
        finally:
            try:  # reaped whatever happened here (an interrupt included)
                _, status = os.waitpid(pid, 0)
            except OSError:
                status = -1
        if status != 0:
            return set(self._changed(0, n))
        found.extend(_unpack_u32(theirs))
        return set(found)

    def _changed(self, lo: int, hi: int) -> list[int]:
        """`changed` among paths lo..hi: one C-level pass of stats compared at
        once, path by path only where a path is gone or something changed."""
        names, flat = self.names, self.flat
        gone = {j for j in self.missing if lo <= j < hi}
        at: Sequence[int] = range(lo, hi)
        mine, sealed = names[lo:hi], flat[4 * lo : 4 * hi]
        found: list[int] = []
        if gone:  # sealed as absent: each on its own, the others in one pass
            found = [j for j in gone if _there(names[j])]
            at = [j for j in at if j not in gone]
            mine = [names[j] for j in at]
            sealed = list(_chain(flat[4 * j : 4 * j + 4] for j in at))
        try:
            now = list(_chain(map(_STAMP_OF, map(os.stat, mine))))
        except OSError:
            pass  # a path is gone or unreadable: path by path below
        else:
            if now == sealed:
                return found
            return found + [at[k] for k in range(len(at)) if now[4 * k : 4 * k + 4] != sealed[4 * k : 4 * k + 4]]
        found = []
        for j in range(lo, hi):
            try:
                st = os.stat(names[j])
            except (FileNotFoundError, NotADirectoryError):
                if j not in gone:
                    found.append(j)
                continue
            except OSError:
                found.append(j)
                continue
            if j in gone or list(_STAMP_OF(st)) != flat[4 * j : 4 * j + 4]:
                found.append(j)
        return found


def _there(path: bytes) -> bool:
    """Does `path` exist now, as a stamp sees it (a sealed absence holds while `stat` finds nothing)?"""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # unreadable: not the absence that was sealed
    return True


def _forkable() -> bool:
    threading = sys.modules.get("threading")
    return hasattr(os, "fork") and (threading is None or threading.active_count() == 1)


_FORK_ABOVE = 4096  # paths; below this one process stats them sooner than two start

_STAMP_OF = attrgetter("st_size", "st_mtime_ns", "st_ino", "st_ctime_ns")  # = stamps.stamp(), in C
_chain = chain.from_iterable


def _pack_u32(values: list[int]) -> bytes:
    a = array("I", values)
    if a.itemsize != 4:
        a = array("L", values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def _unpack_u32(raw: bytes) -> array[int]:
    a = array("I" if array("I").itemsize == 4 else "L")
    a.frombytes(raw)
    if sys.byteorder == "big":
        a.byteswap()
    return a


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
        pid, locks, absent, (names_raw, flat, missing, ids_raw, offsets_raw, members_raw) = fields
        if pid != plan_id:
            return None
        # The frame's checksum vouches for the bytes; these checks catch a seal
        # of another shape, so nothing fails later (each in one C-level pass).
        if not isinstance(names_raw, bytes) or not isinstance(flat, list) or not isinstance(missing, list):
            raise ValueError("shape")
        names = names_raw.split(b"\0") if names_raw else []
        n = len(names)
        if len(flat) != 4 * n or {*map(type, flat)} - {int} or not all(isinstance(p, str) for p in absent):
            raise ValueError("paths")
        ids, offsets, members = _unpack_u32(ids_raw), _unpack_u32(offsets_raw), _unpack_u32(members_raw)
        if (
            len(offsets) != len(ids) + 1
            or offsets[0] != 0
            or offsets[-1] != len(members)
            or list(offsets) != sorted(offsets)
            or (members and max(members) >= n)
            or {*map(type, missing)} - {int}
            or (missing and (min(missing) < 0 or max(missing) >= n))
        ):
            raise ValueError("stages")
        return Seal(
            pid,
            [(str(p), str(h)) for p, h in locks],
            list(absent),
            packed=_Packed(names, flat, missing, ids=ids, offsets=offsets, members=members),
        )
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
    seen: dict[tuple[str, str], Stamp | None] | None = None,
) -> list[tuple[str, Stamp | None]]:
    """The stamps that prove `recorded` (a stage's deps and outs, as its lockfile
    record has them) still hold, given the stage's stat cache entries (by
    absolute path).  Raises Unsealable.  `seen` carries each file's answer
    from one stage to the next of one sealing (an output is its consumers'
    dep: statted once, not once per stage)."""
    found: list[tuple[str, Stamp | None]] = []
    memo = seen if seen is not None else {}
    for rec in recorded:
        _one(rec, root, statcache, now_ns, found, memo=memo)
    return found


def _one(
    rec: FileRecord,
    root: Path,
    trusted: Mapping[str, StatEntry],
    now_ns: int,
    found: list[tuple[str, Stamp | None]],
    *,
    memo: dict[tuple[str, str], Stamp | None],
) -> None:
    full = rec.path if os.path.isabs(rec.path) else os.path.join(root, rec.path)
    if rec.kind == FILE:
        key = (full, rec.hash)
        if key in memo:
            known = memo[key]
            if known is None:
                raise Unsealable(full)
            found.append((full, known))
            return
        try:
            memo[key] = _file_stamp(full, rec.hash, trusted)
        except Unsealable:
            memo[key] = None
            raise
        found.append((full, memo[key]))
    elif rec.kind == DIR:
        _dir(full, rec.hash, trusted, now_ns, found)
    elif rec.kind == GLOB:
        from pivotbuild import globs

        listed: list[str] = []
        matches = globs.expand(root, rec.path, listed)
        if matches != [m.path for m in rec.matches]:
            raise Unsealable(rec.path)
        for d in listed:
            found.append((d, _dir_stamp(d, now_ns)))
        for m in rec.matches:
            _one(m, root, trusted, now_ns, found, memo=memo)
    else:
        raise Unsealable(rec.path)


def _file_stamp(full: str, digest: str, trusted: Mapping[str, StatEntry]) -> Stamp:
    try:
        st = os.stat(full)
    except OSError:
        raise Unsealable(full) from None
    entry = trusted.get(full)
    if entry is None or not entry.matches(st) or entry.hash != digest:
        raise Unsealable(full)
    return stamp(st)


def _dir_stamp(full: str, now_ns: int) -> Stamp | None:
    try:
        st = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        raise Unsealable(full) from None
    if is_racy(st, now_ns):
        raise Unsealable(full)
    return stamp(st)


def _dir(
    full: str, digest: str, trusted: Mapping[str, StatEntry], now_ns: int, found: list[tuple[str, Stamp | None]]
) -> None:
    for dirpath, dirnames, _ in os.walk(full):
        found.append((dirpath, _dir_stamp(dirpath, now_ns)))
        dirnames.sort()
    entries = []
    for rel, kind, st in walk_dir(full):
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
