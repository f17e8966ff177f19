"""The records' codec (pivotbuild.state.codec) is the mapping cattrs' generated
converters give (maps keyed by field name in field order, `executable` as
`exec` and only when true), written by hand for speed (see the module's
docstring): the two must agree on every record, and the hand one must refuse
what does not type-check."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import cattrs
import msgpack
import pytest
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from hypothesis import given, settings
from hypothesis import strategies as st

from pivotbuild import structs
from pivotbuild.state import codec
from pivotbuild.state.records import FileRecord, LockData, ParamRecord, StageRecord


# cattrs generates converters for dataclasses and attrs classes, not for structs: it
# converts the records' dataclass twins (same names, fields, types and defaults), and
# `real` turns a twin back into the record.
def _twin(cls: type) -> Any:
    spec = [
        (f.name, cls.__annotations__[f.name])
        if f.default is structs.MISSING
        else (f.name, cls.__annotations__[f.name], f.default)
        for f in structs.fields(cls)
    ]
    return dataclasses.make_dataclass(cls.__name__, spec, frozen=True)


TWINS = {cls: _twin(cls) for cls in (FileRecord, ParamRecord, StageRecord, LockData)}
REAL = {twin: cls for cls, twin in TWINS.items()}
for _t in TWINS.values():  # what the annotations name (get_type_hints looks in the class first)
    for _cls, _other in TWINS.items():
        setattr(_t, _cls.__name__, _other)


def real(value: Any) -> Any:
    if type(value) in REAL:
        return REAL[type(value)](*(real(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, tuple):
        return tuple(real(v) for v in value)
    return value


def converter() -> cattrs.Converter:
    c = cattrs.Converter()
    exec_out = {"executable": override(rename="exec", omit_if_default=True)}
    exec_in = {"executable": override(rename="exec")}
    for cls, twin in TWINS.items():
        unstructure = make_dict_unstructure_fn(twin, c, **(exec_out if cls is FileRecord else {}))
        for t in (cls, twin):  # a record, and a nested one (dispatched on its declared type: the twin)
            c.register_unstructure_hook(t, unstructure)
        c.register_structure_hook(twin, make_dict_structure_fn(twin, c, **(exec_in if cls is FileRecord else {})))
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
    assert codec.lock_from(back) == real(CATTRS.structure(back, TWINS[LockData])) == data


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
    # (a file's record with no matches, the quick path's: its checks, then the full ones)
    "a number for a file's hash": lambda r: r["outs"][0].__setitem__("hash", 5),
    "a zero for a file's matches": lambda r: r["outs"][0].__setitem__("matches", 0),
    "a missing kind": lambda r: r["outs"][0].pop("kind"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_record_that_does_not_type_check_is_refused(damage: str) -> None:
    assert codec.record_from(good()) is not None
    plain = copy.deepcopy(good())
    DAMAGE[damage](plain)
    with pytest.raises(ValueError):  # what the lockfile and the journal report as damage
        codec.record_from(plain)
