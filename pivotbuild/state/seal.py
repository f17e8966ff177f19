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
hash]...], [must-be-absent...], [path...], [stamp|None...], [[stage index,
[path index...]]...]]`.  A damaged seal (`Damaged`) is reported once, removed
and ignored: the stages are decided the ordinary way; one of another format
version is ignored without a word.
"""

from __future__ import annotations

import contextlib
import os
import stat as statmod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from pivotbuild.paths import STATE_DIR
from pivotbuild.state import framing
from pivotbuild.state.hashing import ENTRY_LINK, ManifestEntry, hash_bytes, hash_file, manifest_bytes, walk_dir
from pivotbuild.state.kinds import DIR, FILE, GLOB
from pivotbuild.state.stamps import Stamp, is_racy, stamp

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from pivotbuild.state.records import FileRecord
    from pivotbuild.state.statcache import StatEntry

SEAL = "seal"
MAGIC = b"PIVSEAL\n"
FORMAT = 2  # 2: in a `state.framing` frame
FRAME = framing.Format(MAGIC, FORMAT, "seal")

# A seal that fails its checksum or does not decode; `str()` says why.
Damaged = framing.Damaged


def seal_path(main_dir: Path) -> Path:
    return main_dir / STATE_DIR / SEAL


class Seal:
    """(A plain class: the no-op fast path does not import dataclasses.)"""

    def __init__(
        self,
        plan_id: str,
        locks: list[tuple[str, str]],
        absent: list[str],
        *,
        paths: list[str] | None = None,
        stamps: list[Stamp | None] | None = None,
        stages: dict[int, list[int]] | None = None,
    ) -> None:
        self.plan_id = plan_id
        self.locks = locks  # (lockfile path, XXH3-128 of its bytes, "" if absent)
        self.absent = absent  # journals and pending files, which must not exist
        self.paths = paths if paths is not None else []
        self.stamps = stamps if stamps is not None else []
        self.stages = stages if stages is not None else {}  # stage index -> path indices
        # A path may be sealed with different stamps by different stages (one
        # carried from an earlier build, one sealed now): key by both.  Built
        # by the first `add`: a seal that is only checked (the no-op) never needs it.
        self._at: dict[tuple[str, Stamp | None], int] | None = None

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
        wanted: set[int] = set()
        for i in stages:
            own = self.stages.get(i)
            if own is None:
                return False
            wanted.update(own)
        return all(same for _, same in self._unchanged(wanted))

    def holding(self, stages: Iterable[int]) -> set[int]:
        """Those of `stages` that are sealed with every stamp unchanged now,
        each path statted once."""
        own = {i: self.stages[i] for i in stages if i in self.stages}
        unchanged = dict(self._unchanged({j for js in own.values() for j in js}))
        return {i for i, js in own.items() if all(unchanged[j] for j in js)}

    def _unchanged(self, indices: Iterable[int]) -> Iterator[tuple[int, bool]]:
        """(path index, whether its stamp is as sealed) for each of `indices`,
        statted now, one by one (a caller may stop at the first change).  At
        10,000 stages this loop is the whole no-op: 20,000 stats."""
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
        if at is None:
            at = self._at = {(p, st): k for k, (p, st) in enumerate(zip(self.paths, self.stamps, strict=True))}
        own: list[int] = []
        for path, st in files:
            k = at.get((path, st))
            if k is None:
                k = at[path, st] = len(self.paths)
                self.paths.append(path)
                self.stamps.append(st)
            own.append(k)
        self.stages[index] = own

    def carry(self, old: Seal, index: int) -> None:
        """Seal stage `index` as `old` sealed it."""
        own = old.stages.get(index)
        if own is not None:
            self.add(index, [(old.paths[j], old.stamps[j]) for j in own])

    def encode(self) -> bytes:
        """Only the paths some stage still uses are written."""
        used = sorted({j for own in self.stages.values() for j in own})
        renumber = {j: k for k, j in enumerate(used)}
        paths = [self.paths[j] for j in used]
        stamps = [list(st) if (st := self.stamps[j]) is not None else None for j in used]
        stages = [[i, [renumber[j] for j in own]] for i, own in sorted(self.stages.items())]
        return FRAME.dump([self.plan_id, [list(x) for x in self.locks], self.absent, paths, stamps, stages])

    def write(self, main_dir: Path) -> None:
        from pivotbuild.state.files import write_atomic

        write_atomic(seal_path(main_dir), self.encode())


def read(main_dir: Path, plan_id: str) -> Seal | None:
    """The seal for this plan, if there is one; None if there is none or it is
    another plan's (the build decides the ordinary way).  Raises `Damaged` if
    it fails its checksum or its shape."""
    try:
        raw = seal_path(main_dir).read_bytes()
    except OSError:
        return None
    try:
        fields = FRAME.load(raw, use_list=False)  # tuples: what a stamp is compared as
    except framing.OtherVersion:
        return None
    try:
        pid, locks, absent, paths, stamps, stages = fields
        if pid != plan_id:
            return None
        n = len(paths)
        if len(stamps) != n or not all(isinstance(p, str) for p in (*paths, *absent)):
            raise ValueError("paths")
        # The frame's checksum vouches for the bytes; these checks catch a seal
        # of another shape.  (A stamp's fields are not type-checked one by one:
        # one that is not four ints never equals a stat, so it only unseals.)
        if any(s is not None and len(s) != 4 for s in stamps):
            raise ValueError("stamps")
        ids = [i for i, _ in stages]
        used = [j for _, own in stages for j in own]
        if {*map(type, ids), *map(type, used)} - {int} or (used and (min(used) < 0 or max(used) >= n)):
            raise ValueError("stages")
        return Seal(
            pid,
            [(str(p), str(h)) for p, h in locks],
            list(absent),
            paths=list(paths),
            stamps=list(stamps),
            stages={i: list(own) for i, own in stages},
        )
    except (ValueError, TypeError) as exc:
        raise Damaged(f"does not decode ({type(exc).__name__})") from exc


def remove(main_dir: Path) -> None:
    with contextlib.suppress(OSError):
        seal_path(main_dir).unlink()


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
