"""`${...}` splitting: `pivotbuild.pivotfile.interpolate.split` and `whole_ref`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pivotbuild.model import AutoVar
from pivotbuild.pivotfile.interpolate import Auto, Part, Ref, TemplateError, split, whole_ref


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("", [""]),
        ("plain text", ["plain text"]),
        ("${X}", [Ref("X", 0)]),
        ("a ${X} b", ["a ", Ref("X", 2), " b"]),
        ("${a}${b}", [Ref("a", 0), Ref("b", 4)]),
        ("pre/${SRC}/x.py", ["pre/", Ref("SRC", 4), "/x.py"]),
        ("${ name }", [Ref("name", 0)]),
        ("${params.train.epochs}", [Ref("params.train.epochs", 0)]),
        ("${params.other.json:a.b}", [Ref("params.other.json:a.b", 0)]),
        ("${a}}", [Ref("a", 0), "}"]),
        ("x}{", ["x}{"]),
    ],
)
def test_split_refs(text: str, parts: list[Part]) -> None:
    assert split(text) == parts


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("$$", ["$"]),
        ("a$$b", ["a$b"]),
        ("$${HOME}", ["${HOME}"]),
        ("$$$", ["$$"]),
        ("$$$$", ["$$"]),
        ("$$@ $$< $$^", ["$@ $< $^"]),
        ("$$${X}", ["$", Ref("X", 2)]),
        ("${X}$$", [Ref("X", 0), "$"]),
        ("a$$b$c", ["a$b$c"]),
    ],
)
def test_split_double_dollar_is_a_literal_dollar(text: str, parts: list[Part]) -> None:
    assert split(text) == parts


@pytest.mark.parametrize("text", ["$HOME", "echo $1 $2", "$", "a$", "$X{Y}", "$HOME/"])
def test_split_leaves_other_dollars_alone(text: str) -> None:
    assert split(text) == [text]


@pytest.mark.parametrize("text", ["$(pwd)", "$*", "$#", "$-", "a $ b", "$?", "cost: 5$"])
def test_split_leaves_shell_specials_alone(text: str) -> None:
    assert split(text) == [text]


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("$@", [Auto(AutoVar.OUTS, 0)]),
        ("$<", [Auto(AutoVar.FIRST_DEP, 0)]),
        ("$^", [Auto(AutoVar.ALL_DEPS, 0)]),
        (
            "$@ $< $^",
            [Auto(AutoVar.OUTS, 0), " ", Auto(AutoVar.FIRST_DEP, 3), " ", Auto(AutoVar.ALL_DEPS, 6)],
        ),
        ("cp $<$@", ["cp ", Auto(AutoVar.FIRST_DEP, 3), Auto(AutoVar.OUTS, 5)]),
        ("--out=$@.tmp", ["--out=", Auto(AutoVar.OUTS, 6), ".tmp"]),
        ("${X} $@", [Ref("X", 0), " ", Auto(AutoVar.OUTS, 5)]),
        ("$$$@", ["$", Auto(AutoVar.OUTS, 2)]),
    ],
)
def test_split_autovars(text: str, parts: list[Part]) -> None:
    assert split(text) == parts


def test_autovar_values() -> None:
    assert AutoVar("@") is AutoVar.OUTS
    assert AutoVar("<") is AutoVar.FIRST_DEP
    assert AutoVar("^") is AutoVar.ALL_DEPS


@pytest.mark.parametrize(
    ("text", "offset"),
    [("${", 0), ("${X", 0), ("ab ${x", 3), ("${A} ${B", 5), ("$$ ${", 3), ("x${y z", 1)],
)
def test_split_unclosed_brace(text: str, offset: int) -> None:
    with pytest.raises(TemplateError) as info:
        split(text)
    assert info.value.offset == offset
    assert "'${' is not closed by '}'" in info.value.message
    assert "$$" in info.value.message  # tells how to write a literal dollar
    assert str(info.value) == info.value.message


@pytest.mark.parametrize(("text", "offset"), [("${}", 0), ("x${ }", 1), ("${A}${}", 4), ("$$${}", 2)])
def test_split_empty_reference(text: str, offset: int) -> None:
    with pytest.raises(TemplateError) as info:
        split(text)
    assert info.value.offset == offset
    assert info.value.message == "empty '${}'"


def test_split_reports_the_first_problem() -> None:
    with pytest.raises(TemplateError) as info:
        split("a ${} ${")
    assert info.value.offset == 2
    assert info.value.message == "empty '${}'"


@pytest.mark.parametrize(
    ("text", "ref"),
    [("${X}", Ref("X", 0)), ("${ X }", Ref("X", 0)), ("${params.a.b}", Ref("params.a.b", 0))],
)
def test_whole_ref(text: str, ref: Ref) -> None:
    assert whole_ref(split(text)) == ref


@pytest.mark.parametrize("text", ["plain", "a${X}", "${X}b", "${X}${Y}", " ${X}", "$@", "$$", "$${X}", ""])
def test_whole_ref_none(text: str) -> None:
    assert whole_ref(split(text)) is None


def test_whole_ref_of_no_parts() -> None:
    assert whole_ref([]) is None


def _split_char_by_char(text: str) -> list[Part]:
    """`split` as first written, a character at a time: what the faster one must agree with."""
    if "$" not in text:
        return [text]
    parts: list[Part] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$" or i + 1 >= len(text):
            buf.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            buf.append("$")
            i += 2
        elif nxt == "{":
            end = text.find("}", i + 2)
            if end < 0:
                raise TemplateError("'${' is not closed by '}' (write '$$' for a literal '$')", i)
            name = text[i + 2 : end].strip()
            if not name:
                raise TemplateError("empty '${}'", i)
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(Ref(name, i))
            i = end + 1
        elif nxt in "@<^":
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(Auto(AutoVar(nxt), i))
            i += 2
        else:
            buf.append(c)
            i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def _outcome(text: str) -> object:
    try:
        return split(text)
    except TemplateError as exc:
        return (exc.message, exc.offset)


def _reference_outcome(text: str) -> object:
    try:
        parts = _split_char_by_char(text)
    except TemplateError as exc:
        return (exc.message, exc.offset)
    return parts


@settings(max_examples=500, database=None, deadline=None)
@given(st.text(alphabet=st.sampled_from([*"$${}@<^ ax.\t", "é", "\x00"]), max_size=24))
def test_split_agrees_with_reading_a_character_at_a_time(text: str) -> None:
    assert _outcome(text) == _reference_outcome(text)
