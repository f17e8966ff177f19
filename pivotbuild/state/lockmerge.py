"""Three-way merge of lockfiles, for git's merge driver (`pivotbuild lock merge`).

A lockfile holds facts about past runs, not intent, so a conflict has a safe
answer: forget the stage.  Records are compared stage by stage: one changed on
one side only (added, changed or removed) is taken from that side; one changed
the same way on both sides is kept; one changed differently on both sides
(including removed on one side and changed on the other) is dropped, so the
stage simply runs again on the next build.
"""

from __future__ import annotations

from pivotbuild.state.records import LockData, StageRecord
from pivotbuild.structs import struct


@struct(frozen=True, slots=True)
class Merged:
    data: LockData
    dropped: tuple[str, ...]  # stages changed differently on both sides, sorted


def merge(base: LockData, ours: LockData, theirs: LockData) -> Merged:
    """The merge of `ours` and `theirs`, both descended from `base`."""
    b, o, t = base.by_name(), ours.by_name(), theirs.by_name()
    kept: dict[str, StageRecord] = {}
    dropped = []
    for name in sorted(b.keys() | o.keys() | t.keys()):
        was, mine, other = b.get(name), o.get(name), t.get(name)
        if other in (mine, was):  # theirs agrees with ours, or did not change
            chosen = mine
        elif mine == was:
            chosen = other
        else:
            dropped.append(name)
            continue
        if chosen is not None:
            kept[name] = chosen
    return Merged(LockData.of(kept), tuple(dropped))
