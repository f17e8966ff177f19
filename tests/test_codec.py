"""The records' codec (pivotbuild.state.codec) is the mapping cattrs' generated
converters give (maps keyed by field name in field order, `executable` as
`exec` and only when true), written by hand for speed (see the module's
docstring): the two must agree on every record, and the hand one must refuse
what does not type-check."""

from __future__ import annotations

import copy
from typing import Any

import cattrs
import msgpack
import pytest
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from hypothesis import given, settings
from hypothesis import strategies as st

from pivotbuild.state import codec
from pivotbuild.state.records import FileRecord, LockData, ParamRecord, StageRecord


def converter() -> cattrs.Converter:
    c = cattrs.Converter()
    exec_unstructure = override(rename="exec", omit_if_default=True)
    c.register_unstructure_hook(FileRecord, make_dict_unstructure_fn(FileRecord, c, executable=exec_unstructure))
    c.register_structure_hook(FileRecord, make_dict_structure_fn(FileRecord, c, executable=override(rename="exec")))
    for t in (ParamRecord, StageRecord, LockData):
        c.register_unstructure_hook(t, make_dict_unstructure_fn(t, c))
        c.register_structure_hook(t, make_dict_structure_fn(t, c))
    return c


CATTRS = converter()
text = st.text(max_size=12)
leaf = st.builds(FileRecord, text, st.sampled_from(["file", "dir", "absent"]), text, st.just(()), st.booleans())
files = st.builds(FileRecord, text, st.just("glob"), text, st.lists(leaf, max_size=3).map(tuple), st.just(False)) | leaf
records = st.builds(
    StageRecord,
    name=text,
    fingerprint=text,
    command=text,
    deps=st.lists(files, max_size=4).map(tuple),
    outs=st.lists(files, max_size=3).map(tuple),
    params=st.lists(st.builds(ParamRecord, text, text, text), max_size=3).map(tuple),
    facets=st.lists(st.tuples(text, text), max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=4))
def test_the_hand_codec_packs_and_reads_as_cattrs_does(stages: list[StageRecord]) -> None:
    data = LockData(tuple(stages))
    plain = codec.lock_obj(data)
    assert msgpack.packb(plain) == msgpack.packb(CATTRS.unstructure(data))
    back = msgpack.unpackb(msgpack.packb(plain))
    assert codec.lock_from(back) == CATTRS.structure(back, LockData) == data


def good() -> dict[str, Any]:
    deps = (FileRecord("a", "glob", "h", (FileRecord("a/b", "file", "h2"),)),)
    out = FileRecord("o", "file", "h3", executable=True)
    record = StageRecord("s", "f", "c", deps, (out,), (ParamRecord("p.toml", "k", "1"),), (("shell", "h4"),))
    plain: dict[str, Any] = msgpack.unpackb(msgpack.packb(codec.record_obj(record)))
    return plain


DAMAGE = {
    "a number for a string": lambda r: r.__setitem__("command", 3),
    "a string for a list": lambda r: r.__setitem__("deps", "abc"),
    "a string for a pair": lambda r: r.__setitem__("facets", ["ab"]),
    "a pair of three": lambda r: r.__setitem__("facets", [["a", "b", "c"]]),
    "a number for a boolean": lambda r: r["outs"][0].__setitem__("exec", 1),
    "a missing field": lambda r: r.pop("fingerprint"),
    "a list for a map": lambda r: r["deps"].__setitem__(0, ["a", "file", "h"]),
    "a nested match's bad hash": lambda r: r["deps"][0]["matches"][0].__setitem__("hash", None),
    "a param's missing value": lambda r: r["params"][0].pop("value_json"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_record_that_does_not_type_check_is_refused(damage: str) -> None:
    assert codec.record_from(good()) is not None
    plain = copy.deepcopy(good())
    DAMAGE[damage](plain)
    with pytest.raises(ValueError):  # what the lockfile and the journal report as damage
        codec.record_from(plain)
