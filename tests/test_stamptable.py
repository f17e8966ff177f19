"""The seal's packed table of stamps (state/stamptable.py): what `pack` stores
is what the straightforward loop over every path and stage stores, and
`unpack` gives back each kept path's name and stamp (None for one sealed as
absent) and each stage's paths; the C pass (`_stamps`, built at install where
a C compiler is) finds exactly the paths the Python pass finds."""

from __future__ import annotations

import os
import shutil
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pivotbuild.state import stamptable
from pivotbuild.state.stamps import Stamp, stamp


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


def test_the_c_pass_is_built_here_where_a_c_compiler_is() -> None:
    """As `_clonespawn` (test_spawn.py): built at install where a compiler is,
    unless PIVOTBUILD_NO_EXTENSION=1; without it the pass is Python's."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]  # (hatch_build's)
    if shutil.which(compiler) is None or os.environ.get("PIVOTBUILD_NO_EXTENSION") == "1":
        assert stamptable._stamps is None
    else:
        assert stamptable._stamps is not None, f"{compiler} is here, but _stamps was not built at install"


# What happens to each sealed path before the pass: nothing, its bytes
# rewritten (another size), its times set (same size), replaced by another
# file (another inode), removed, or (a path sealed as absent) created.
_FATES = st.sampled_from(["same", "rewritten", "touched", "replaced", "removed"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), _FATES), min_size=1, max_size=10), st.booleans())
def test_the_c_pass_finds_what_the_python_pass_finds(tmp_path: Path, paths: list[tuple[bool, str]], many: bool) -> None:
    """Both C passes (the packed table's, and a seal's paths as a build made
    them), against Python's; with `many`, after 300 paths that stay, so that
    C splits the stats between two threads."""
    c_pass = stamptable._stamps
    if c_pass is None:
        pytest.fail("_stamps is not built here (see the test above)")
    names, stamps = [], []
    if many:
        pad = tmp_path / "pad"
        if not pad.exists():
            pad.mkdir()
            for k in range(300):
                (pad / f"k{k}").write_text("stays\n")
        names = [os.fsencode(pad / f"k{k}") for k in range(300)]
        stamps = [stamp(os.stat(name)) for name in names]
    first = len(names)
    where = Path(tempfile.mkdtemp(dir=tmp_path))  # (one for each example)
    for j, (exists, _) in enumerate(paths):
        path = where / f"p{j}"
        names.append(os.fsencode(path))
        if exists:
            path.write_text(f"file {j}\n")
            stamps.append(stamp(os.stat(path)))
        else:
            stamps.append(None)
    table = stamptable.StampTable.unpack(stamptable.pack(names, stamps, {0: list(range(len(names)))}))
    for j, (exists, fate) in enumerate(paths):
        path = where / f"p{j}"
        if not exists:
            if fate != "same":
                path.write_text("now here\n")
        elif fate == "rewritten":
            path.write_text(f"file {j} again, longer\n")
        elif fate == "touched":
            os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        elif fate == "replaced":
            (where / "new").write_text(f"file {j}\n")
            os.replace(where / "new", path)
        elif fate == "removed":
            path.unlink()
    in_c = table.changed()
    listed_in_c = stamptable.changed_stamps(names, stamps)
    try:
        stamptable._stamps = None  # type: ignore[assignment]  # (each example restores it: not monkeypatch's)
        in_python = table.changed()
        listed_in_python = stamptable.changed_stamps(names, stamps)
    finally:
        stamptable._stamps = c_pass
    assert in_c == in_python == set(listed_in_c) == set(listed_in_python)
    expected = {first + j for j, (exists, fate) in enumerate(paths) if fate != "same"}
    assert in_c == expected


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(st.integers(0, 50), st.lists(st.integers(0, 39), max_size=6), max_size=30),
    st.lists(st.integers(0, 39), max_size=8),
)
def test_the_stages_apart_from_the_changed_paths_are_the_same_in_c_and_python(
    stages: dict[int, list[int]], changed: list[int]
) -> None:
    c_pass = stamptable._stamps
    if c_pass is None:
        pytest.fail("_stamps is not built here (see the test above)")
    in_c = stamptable.apart(stages, changed, 40)
    try:
        stamptable._stamps = None  # type: ignore[assignment]  # (each example restores it)
        in_python = stamptable.apart(stages, changed, 40)
    finally:
        stamptable._stamps = c_pass
    assert sorted(in_c) == sorted(in_python) == sorted(i for i, own in stages.items() if not set(own) & set(changed))
