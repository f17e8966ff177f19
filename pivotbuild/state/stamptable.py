"""The seal's table of stamps: every path a seal holds, its stamp, and which
paths each sealed stage's decision read, packed for speed, and checked
against the file system in one pass.

Stored as six values (see `pack`): the paths as one NUL-separated byte string
(split once), the stamps as one flat list of ints (four per path; zeros for a
path sealed as absent, whose indices are listed apart), and the sealed stages
as three little-endian uint32 arrays: their indices, offsets into the
members, and the members (path indices).  At 10,000 stages this reads in a
few milliseconds where a list of tuples per path took fifteen, and nothing
is unpacked path by path unless a stage must be looked up.
"""

from __future__ import annotations

import os
import sys
from array import array
from collections.abc import Mapping, Sequence
from itertools import accumulate, chain

from pivotbuild.state.stamps import Stamp, stamp, stamp_now

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from typing import Any

FORK_ABOVE = 4096  # paths; below this one process stats them sooner than two start
_chain = chain.from_iterable

_STAMPS_API = 3  # what this module and seal.py call _stamps with (its API constant)
try:
    from pivotbuild.state import _stamps
except ImportError:  # not built at install (no C compiler, another platform): the same pass in Python
    _stamps = None  # type: ignore[assignment]
else:
    if getattr(_stamps, "API", None) != _STAMPS_API:  # built from another version of its source
        _stamps = None  # type: ignore[assignment]


def pack(names: Sequence[bytes], stamps: Sequence[Stamp | None], stages: Mapping[int, Sequence[int]]) -> list[Any]:
    """The six stored values for these paths (`os.fsencode`d) and stamps and
    the stages' path indices; only the paths some stage uses are kept (and
    renumbered)."""
    # (Passes in C over the paths and members, not a loop turn each: an
    # incremental build of 10,000 stages writes the whole table again, 30,000
    # paths in 7 to 9 ms this way, 9 to 13 as a loop.)
    used = sorted(set(_chain(stages.values())))
    renumber = dict(zip(used, range(len(used)), strict=True))
    joined = b"\0".join(map(names.__getitem__, used))
    kept = list(map(stamps.__getitem__, used))
    missing: list[int] = []
    if None in kept:  # paths sealed as absent: zeros in their place, their indices listed
        missing = [k for k, st in enumerate(kept) if st is None]
        for k in missing:
            kept[k] = _ABSENT
    # (no None is left in `kept`)
    flat: list[int] = list(_chain(kept))  # type: ignore[arg-type]
    ids = sorted(stages)
    own = list(map(stages.__getitem__, ids))
    offsets = [0, *accumulate(map(len, own))]
    members = list(map(renumber.__getitem__, _chain(own)))
    return [joined, flat, missing, _pack_u32(ids), _pack_u32(offsets), _pack_u32(members)]


_ABSENT = (0, 0, 0, 0)  # a path sealed as absent, in the flat stamps


class StampTable:
    """The stored values, checked (`unpack`); see the module's docstring."""

    __slots__ = ("_gone", "_ids", "flat", "ids", "members", "missing", "names", "offsets")

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
        self._gone: set[int] | None = None

    @classmethod
    def unpack(cls, fields: Any) -> StampTable:
        """The table stored as `fields`.  Raises ValueError, TypeError or
        AttributeError if they are of another shape: the frame's checksum
        vouches for the bytes, and these checks (each one C-level pass) make
        sure nothing fails later."""
        names_raw, flat, missing, ids_raw, offsets_raw, members_raw = fields
        if not isinstance(names_raw, bytes) or not isinstance(flat, list) or not isinstance(missing, list):
            raise ValueError("shape")
        names = names_raw.split(b"\0") if names_raw else []
        n = len(names)
        if len(flat) != 4 * n or {*map(type, flat)} - {int}:
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
        return cls(names, flat, missing, ids=ids, offsets=offsets, members=members)

    def stamps(self) -> list[Stamp | None]:
        """Each path's stamp, None for one sealed as absent."""
        quads = iter(self.flat)
        found: list[Stamp | None] = list(zip(quads, quads, quads, quads, strict=True))  # (in C: 4 ints a path)
        for j in self.missing:
            found[j] = None
        return found

    def sealed_ids(self) -> set[int]:
        if self._ids is None:
            self._ids = set(self.ids)
        return self._ids

    def stage_map(self) -> dict[int, list[int]]:
        offsets, members = self.offsets, self.members
        return {i: list(members[offsets[k] : offsets[k + 1]]) for k, i in enumerate(self.ids)}

    def holds(self, stage: int) -> bool:
        """Is `stage` sealed, each of its paths' stamps as sealed now?  (One
        stage looked up in the packed arrays: a build asks this of the few
        stages it decides, and unpacks nothing.)"""
        from bisect import bisect_left  # here: the no-op imports this module, and never asks

        ids = self.ids
        k = bisect_left(ids, stage)
        if k == len(ids) or ids[k] != stage:
            return False
        if self._gone is None:
            self._gone = set(self.missing)
        gone = self._gone
        return not any(self._moved(j, gone) for j in self.members[self.offsets[k] : self.offsets[k + 1]])

    def _moved(self, j: int, gone: set[int]) -> bool:
        """Is path `j`'s stamp now other than sealed (`gone`: the paths sealed as absent)?"""
        return stamp_now(self.names[j]) != (None if j in gone else tuple(self.flat[4 * j : 4 * j + 4]))

    def changed(self, *, fork: bool = False) -> set[int]:
        """The paths whose stamp is not as sealed, statted now.

        The stats are the whole cost (3 us each in Python here: 60 ms at
        10,000 stages).  Where `_stamps` is built it makes them on two threads
        with the GIL let go.  Elsewhere threads cannot share them (each stat
        retakes the GIL), so with `fork` a large seal is checked half here and
        half in a forked child, as git preloads its index on several threads:
        only for the fast path's look (`holding`), before the engine starts,
        and only where this process has no other thread (a fork copies just
        the caller)."""
        n = len(self.names)
        if not fork or n < FORK_ABOVE or _stamps is not None or not _forkable():
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
        once (in C itself where `_stamps` is built: 0.9 us a path against
        2.2), path by path only where a path is gone or cannot be statted."""
        names, flat = self.names, self.flat
        gone = {j for j in self.missing if lo <= j < hi}
        if _stamps is not None:
            differ = _stamps.changed(names, flat, lo, hi, gone)
            if differ is None:  # a path is gone or unreadable: path by path
                return [j for j in range(lo, hi) if self._moved(j, gone)]
            return [j for j in gone if stamp_now(names[j]) is not None] + differ
        at: Sequence[int] = range(lo, hi)
        mine, sealed = names[lo:hi], flat[4 * lo : 4 * hi]
        found: list[int] = []
        if gone:  # sealed as absent: each on its own, the others in one pass
            found = [j for j in gone if stamp_now(names[j]) is not None]
            at = [j for j in at if j not in gone]
            mine = [names[j] for j in at]
            sealed = list(_chain(flat[4 * j : 4 * j + 4] for j in at))
        try:
            now = list(_chain(map(stamp, map(os.stat, mine))))
        except OSError:
            pass  # a path is gone or unreadable: path by path below
        else:
            if now == sealed:
                return found
            return found + [at[k] for k in range(len(at)) if now[4 * k : 4 * k + 4] != sealed[4 * k : 4 * k + 4]]
        return [j for j in range(lo, hi) if self._moved(j, gone)]


def apart(stages: dict[int, list[int]], changed: list[int], n: int) -> list[int]:
    """The stages (of `stages`: stage -> its path indices, all below `n`) none
    of whose paths is among `changed`: in C where `_stamps` is built (a
    thousand stages' `isdisjoint` took 0.3 ms), else here."""
    if _stamps is not None:
        return _stamps.apart(stages, changed, n)
    moved = set(changed)
    return [i for i, own in stages.items() if moved.isdisjoint(own)]


def c_pass() -> bool:
    """Whether the passes are made in C (`_stamps` is built: it lets go of the GIL for its stats)."""
    return _stamps is not None


def changed_stamps(names: list[bytes], stamps: list[Stamp | None]) -> list[int]:
    """The indices of the paths whose stamp is not `stamps`' now (None: sealed
    as absent), in one pass: a seal's paths as a build made them, not packed
    (see Seal.holding).  In C where `_stamps` is built, else here."""
    if _stamps is not None:
        return _stamps.changed_stamps(names, stamps)
    return [j for j, (name, sealed) in enumerate(zip(names, stamps, strict=True)) if stamp_now(name) != sealed]


def _forkable() -> bool:
    threading = sys.modules.get("threading")
    return hasattr(os, "fork") and (threading is None or threading.active_count() == 1)


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
