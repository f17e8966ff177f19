"""The seal's packed table of stamps (state/stamptable.py): what `pack` stores
is what the straightforward loop over every path and stage stores, and
`unpack` gives back each kept path's name and stamp (None for one sealed as
absent) and each stage's paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given
from hypothesis import strategies as st

from pivotbuild.state import stamptable
from pivotbuild.state.stamps import Stamp


def _pack_by_loop(
    names: Sequence[bytes], stamps: Sequence[Stamp | None], stages: Mapping[int, Sequence[int]]
) -> list[object]:
    """`pack` as one path and one stage at a time: the reference."""
    used = sorted({j for own in stages.values() for j in own})
    renumber = {j: k for k, j in enumerate(used)}
    flat: list[int] = []
    missing: list[int] = []
    for k, j in enumerate(used):
        if stamps[j] is None:
            missing.append(k)
            flat.extend((0, 0, 0, 0))
        else:
            flat.extend(stamps[j])  # type: ignore[arg-type]
    ids = sorted(stages)
    offsets: list[int] = [0]
    members: list[int] = []
    for i in ids:
        members.extend(renumber[j] for j in stages[i])
        offsets.append(len(members))
    pack_u32 = stamptable._pack_u32
    return [b"\0".join(names[j] for j in used), flat, missing, pack_u32(ids), pack_u32(offsets), pack_u32(members)]


Table = tuple[list[bytes], list[Stamp | None], dict[int, list[int]]]
_stamp = st.none() | st.tuples(*[st.integers(0, 2**63 - 1)] * 4)


@st.composite
def tables(draw: st.DrawFn) -> Table:
    n = draw(st.integers(0, 12))
    names = [b"p%d/%s" % (j, draw(st.binary(max_size=3)).replace(b"\0", b"_")) for j in range(n)]
    stamps: list[Stamp | None] = [draw(_stamp) for _ in range(n)]
    paths = st.lists(st.integers(0, n - 1), max_size=5) if n else st.just([])
    stages = draw(st.dictionaries(st.integers(0, 50), paths))
    return names, stamps, stages


@given(tables())
def test_pack_stores_what_the_loop_over_every_path_stores(table: Table) -> None:
    names, stamps, stages = table
    assert stamptable.pack(names, stamps, stages) == _pack_by_loop(names, stamps, stages)


@given(tables())
def test_unpack_gives_back_the_kept_paths_their_stamps_and_each_stages_paths(table: Table) -> None:
    names, stamps, stages = table
    packed = stamptable.StampTable.unpack(stamptable.pack(names, stamps, stages))
    used = sorted({j for own in stages.values() for j in own})
    assert packed.names == [names[j] for j in used]
    assert packed.stamps() == [stamps[j] for j in used]
    renumber = {j: k for k, j in enumerate(used)}
    assert packed.stage_map() == {i: [renumber[j] for j in own] for i, own in stages.items()}
