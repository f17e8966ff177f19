"""Property tests for the Pivotfile parser and formatter (hypothesis).

(a) No text makes `parse` fail with anything but a located `PivotfileError`.
(b) Nor does any soup of Pivotfile-looking tokens.
(c) Generated valid Pivotfiles, in many layouts, parse; `fmt` is idempotent,
    keeps comments and run scripts, and does not change the compiled stages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from conftest import compile_text
from helpers import PARAMS_TOML, Draw, scripts
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pivotbuild import structs
from pivotbuild.errors import Location, PivotfileError
from pivotbuild.model import Pipeline
from pivotbuild.pivotfile.fmt import format_module
from pivotbuild.pivotfile.parser import parse
from pivotbuild.pivotfile.syntax import (
    Assignment,
    DefaultStmt,
    IncludeStmt,
    Module,
    PipelineStmt,
    StageDecl,
    Word,
)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

PARAM_KEYS = ["train.epochs", "train.lr", "model.depth", "model.name", "train"]


# -- (a) and (b): never anything but a located PivotfileError -----------------------------------


def check_parse(text: str) -> Module | None:
    """Parse `text`; on a PivotfileError check every diagnostic is located inside the text."""
    try:
        return parse(text)
    except PivotfileError as exc:
        lines = text.split("\n")
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.loc.path == "Pivotfile"
            assert d.loc.line >= 1, d
            assert d.loc.col >= 1, d
            assert d.loc.line <= len(lines) + 1, (d, len(lines))
            if d.loc.line <= len(lines):
                line = lines[d.loc.line - 1]
                assert d.loc.col <= len(line.removesuffix("\r")) + 1, (d, line)
                assert d.source_line.lstrip("\ufeff") == line.rstrip("\r").lstrip("\ufeff")
            assert d.message
            rendered = d.render()
            assert rendered.startswith(f"Pivotfile:{d.loc.line}:{d.loc.col}: error: ")
        return None


SPECIAL_CHARS = [*" \t\n\r\"'#${}:=(),\\*?[]/.-@_", "\ufeff", "\x00", "é", "→"]

random_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(SPECIAL_CHARS),
        st.sampled_from(list("abcxyzABCXYZ0129")),
        st.characters(codec="utf-8"),
    ),
    max_size=300,
)


@PROPERTY_SETTINGS
@given(random_text)
def test_random_text_only_raises_located_pivotfile_errors(text: str) -> None:
    check_parse(text)


@PROPERTY_SETTINGS
@given(st.text(alphabet=st.sampled_from([*SPECIAL_CHARS, *"stageruna"]), max_size=200))
def test_text_of_pivotfile_characters_only_raises_located_pivotfile_errors(text: str) -> None:
    check_parse(text)


FRAGMENTS = [
    "stage",
    "stage a:",
    "x:",
    "deps:",
    "run:",
    "outs:",
    "matrix:",
    "env:",
    "jobs:",
    "desc:",
    "foo:",
    "pipeline",
    "default",
    "include",
    "(",
    ")",
    ",",
    "=",
    "A",
    "A=",
    "a=b",
    "${A}",
    "$@",
    '"q',
    '"a b"',
    "'",
    "#c",
    "\\",
    "\n",
    "\r\n",
    "    ",
    "  ",
    "\t",
    "(cache=false,",
    "persist)",
    ":",
    "x",
    "",
]
SEPARATORS = ["", " ", "  ", "\n", "\n    ", "\n        ", "\n\t", "\t", " \\\n"]


@st.composite
def token_soup(draw: Draw[Any]) -> str:
    tokens: list[str] = draw(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
    seps: list[str] = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(tokens), max_size=len(tokens)))
    return "".join(t + s for t, s in zip(tokens, seps, strict=True))


@PROPERTY_SETTINGS
@given(token_soup())
def test_token_soups_only_raise_located_pivotfile_errors(text: str) -> None:
    check_parse(text)


@st.composite
def stage_soup(draw: Draw[Any]) -> str:
    """A stage header followed by lines made of fragments: stresses the block lexer."""
    lines = ["stage s:"]
    for _ in range(draw(st.integers(0, 8))):
        indent = draw(st.sampled_from(["", " ", "    ", "        ", "\t", "\t\t", " \t"]))
        body = draw(st.lists(st.sampled_from(FRAGMENTS), max_size=6))
        lines.append(indent + " ".join(body))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


@PROPERTY_SETTINGS
@given(stage_soup())
def test_stage_soups_only_raise_located_pivotfile_errors(text: str) -> None:
    check_parse(text)


def all_words(module: Module) -> list[Word]:
    words: list[Word] = []
    for s in module.statements:
        if isinstance(s, PipelineStmt):
            words.append(s.name)
        elif isinstance(s, Assignment):
            words += [s.name, *s.values]
        elif isinstance(s, DefaultStmt):
            words += s.targets
        elif isinstance(s, IncludeStmt):
            words += s.paths
        else:
            words.append(s.name)
            for f in s.fields:
                words += [f.key, *f.words]
                for o in f.outs:
                    words += [o.path, *o.options]
                for i in f.items:
                    words += [i.key, *i.values]
    return words


@PROPERTY_SETTINGS
@given(token_soup())
def test_whatever_parses_formats_to_an_equivalent_file(text: str) -> None:
    module = check_parse(text)
    if module is None:
        return
    # A word ending in a literal backslash cannot be printed at the end of a
    # line (it would become a continuation); test_fmt has the explicit test.
    assume(not any(w.raw.endswith("\\") for w in all_words(module)))
    out = format_module(module)
    again = parse(out)
    assert format_module(again) == out
    assert scripts(again) == scripts(module)
    assert shapes(again) == shapes(module)


# -- (c) generated valid Pivotfiles ----------------------------------------------------------------

LOWER = st.sampled_from(["a", "b", "c", "prep", "train", "report", "x1", "s_2", "lint", "stage", "default", "gpu"])
UPPER = st.sampled_from(["A", "B", "SRC", "MODELS", "X_1", "OUT", "N2", "FLAGS"])
PLAIN = st.sampled_from(["a", "b.csv", "x-y", "data.v2", "m_1", "0", "z9", "p.q.r", "long-name_1.txt", "-flag"])
VALUE = st.sampled_from(["0", "1", "a", "b2", "x_y", "3.5"])
COMMENT = st.sampled_from(["#", "# note", "#tight", "# with 'quotes' and \"more\"", "# $ {} ( ) = : \\", "## two"])


@dataclasses.dataclass
class Layout:
    """How one generated file is spelled: indentation, spacing, breaks, comments."""

    draw: Draw[Any]
    comments: bool

    def sep(self) -> str:
        return self.draw(st.sampled_from([" ", " ", " ", "  ", "   ", "\t"]))

    def trailing(self) -> str:
        if self.comments and self.draw(st.integers(0, 3)) == 0:
            return self.draw(st.sampled_from([" ", "  ", "     ", "\t"])) + self.draw(COMMENT)
        return ""

    def blank_lines(self, most: int) -> list[str]:
        return [self.draw(st.sampled_from(["", "", "  ", "\t"])) for _ in range(self.draw(st.integers(0, most)))]

    def own_comments(self, indent: str) -> list[str]:
        if not self.comments:
            return []
        return [indent + self.draw(COMMENT) for _ in range(self.draw(st.integers(0, 2)))]

    def value_lines(self, head: str, words: list[str], indent: str, deeper: str) -> list[str]:
        """`head` then `words`, broken over continuation lines in any legal way.

        `deeper` is a continuation indentation (deeper than the key); a trailing
        backslash continues onto a line of any indentation.
        """
        lines: list[str] = []
        current = head
        first = True
        has_words = False
        for word in words:
            if has_words or not first:
                brk = self.draw(st.integers(0, 4))
            else:
                brk = self.draw(st.integers(0, 8))  # the value may start on the next line
            if brk == 0:
                if self.draw(st.booleans()):
                    lines.append(current)
                    extra = "" if deeper.startswith("\t") else self.draw(st.sampled_from(["", " ", "   "]))
                    current = deeper + extra
                else:
                    lines.append(current + self.draw(st.sampled_from([" \\", "  \\", "\\" if has_words else " \\"])))
                    current = self.draw(st.sampled_from(["", " ", "  ", indent, deeper]))
                current += word
            else:
                current += self.sep() + word
            first = False
            has_words = True
        lines.append(current + self.trailing())
        return lines


def var_ref(names: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from([f"${{{n}}}" for n in names])


def assignment(draw: Draw[Any], name: str, names: list[str], layout: Layout) -> list[str]:
    word = st.one_of(PLAIN, PLAIN.map(lambda w: f'"{w} x"'), PLAIN.map(lambda w: f"'{w}'"))
    if names:
        word = st.one_of(word, var_ref(names))
    values = draw(st.lists(word, max_size=4))
    eq = draw(st.sampled_from(["=", " = ", "  =  ", "= ", " ="]))
    return layout.value_lines(name + eq.rstrip(" "), values, "", " " * draw(st.integers(1, 8)))


@dataclasses.dataclass
class StageSpec:
    name: str
    lines: list[str]


def stage(draw: Draw[Any], name: str, var_names: list[str], layout: Layout) -> StageSpec:
    indent = draw(st.sampled_from([" ", "  ", "    ", "    ", "        ", "\t"]))
    deeper = indent + ("\t" if indent == "\t" else " " * draw(st.integers(1, 8)))
    path = st.one_of(PLAIN, PLAIN.map(lambda w: f"d/{w}"), PLAIN.map(lambda w: f'"sp {w}"'))
    if var_names:
        path = st.one_of(path, var_ref(var_names), var_ref(var_names).map(lambda r: f"in/{r}"))
    fields: dict[str, list[str]] = {}

    def words(key: str, ws: list[str]) -> list[str]:
        return layout.value_lines(indent + key + ":", ws, indent, deeper)

    axis_values: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        axis_values = draw(st.lists(VALUE, min_size=1, max_size=3, unique=True))
        items = ["m=" + " ".join(axis_values)]
        if draw(st.booleans()):
            items.append("n=" + " ".join(draw(st.lists(VALUE, min_size=1, max_size=2, unique=True))))
        fields["matrix"] = words("matrix", items)
    if draw(st.booleans()):
        fields["desc"] = words("desc", draw(st.lists(PLAIN, max_size=5)))
    if draw(st.booleans()):
        fields["deps"] = words("deps", draw(st.lists(path, max_size=5)))
    outs = draw(st.lists(PLAIN, max_size=4, unique=True))
    if outs or draw(st.booleans()):
        option = st.sampled_from(["", " (persist)", " (cache=false)", " (cache=false, persist)", " (incremental)"])
        fields["outs"] = words("outs", [f"out/${{stage}}/{o}{draw(option)}" for o in outs])
    if draw(st.booleans()):
        fields["params"] = words("params", draw(st.lists(st.sampled_from(PARAM_KEYS), max_size=3, unique=True)))
    if draw(st.booleans()):
        fields["mutex"] = words("mutex", draw(st.lists(st.one_of(LOWER, st.just("*")), max_size=3)))
    scalars = {
        "jobs": st.integers(1, 8).map(str),
        "mem": st.sampled_from(["512M", "4G", "100K", "1024"]),
        "timeout": st.sampled_from(["90s", "10m", "1h", "1h30m"]),
        "retry": st.integers(0, 3).map(str),
        "dir": st.sampled_from(["sub", "a/b", "."]),
        "always": st.sampled_from(["yes", "no", "true", "off"]),
    }
    for key, strategy in scalars.items():
        if draw(st.integers(0, 2)) == 0:
            fields[key] = words(key, [draw(strategy)])
    if draw(st.booleans()):
        env_value = st.one_of(VALUE, st.just(""), VALUE.map(lambda v: f'"{v} v"'))
        keys = draw(st.lists(UPPER, min_size=1, max_size=3, unique=True))
        fields["env"] = words("env", [f"{k}={draw(env_value)}" for k in keys])
    fields["run"] = run_field(draw, indent, var_names, bool(axis_values), layout)

    order = draw(st.permutations(list(fields)))
    header = "stage" + draw(st.sampled_from([" ", "  ", "\t"])) + name + draw(st.sampled_from([":", " :"]))
    lines = [header + layout.trailing()]
    for key in order:
        lines += layout.blank_lines(1)
        lines += layout.own_comments(indent)
        lines += fields[key]
    return StageSpec(name, lines)


def run_field(draw: Draw[Any], indent: str, var_names: list[str], has_axis: bool, layout: Layout) -> list[str]:
    token = st.one_of(PLAIN, st.sampled_from(["$@", "$<", "$^", "$$HOME", "'q q'", '"a  b"', "#", "|", ">", "\\"]))
    if var_names:
        token = st.one_of(token, var_ref(var_names))
    if has_axis:
        token = st.one_of(token, st.just("${m}"))
    token = st.one_of(token, st.just("${stage}"))

    def command() -> str:
        return "echo" + "".join(" " + draw(token) for _ in range(draw(st.integers(0, 4))))

    head = indent + "run:"
    if draw(st.booleans()):  # inline
        lines = [head + draw(st.sampled_from([" ", "  ", "\t"])) + command()]
        n_more = draw(st.integers(0, 2))
    else:
        lines = [head + draw(st.sampled_from(["", " ", "   "]))]
        n_more = draw(st.integers(1, 4))
    body = indent + ("\t" if indent == "\t" else " " * draw(st.integers(1, 8)))
    for i in range(n_more):
        if i and draw(st.integers(0, 4)) == 0:
            lines.append(draw(st.sampled_from(["", "   "])))
        rel = draw(st.sampled_from(["", "", "  ", "    "]))
        lines.append(body + rel + command())
    return lines


@dataclasses.dataclass
class Generated:
    text: str
    stage_names: list[str]


@st.composite
def pivotfiles(draw: Draw[Any], comments: bool = True) -> Generated:
    layout = Layout(draw, comments)
    chunks: list[list[str]] = []
    var_names: list[str] = []
    if draw(st.booleans()):
        chunks.append(layout.value_lines("pipeline", [draw(LOWER)], "", "  "))
    if draw(st.booleans()):
        chunks.append(layout.value_lines("SHELL =", ["/bin/sh", "-e"], "", "    "))
    for name in draw(st.lists(UPPER, max_size=4, unique=True)):
        chunks.append(assignment(draw, name, var_names, layout))
        var_names.append(name)
    names = draw(st.lists(LOWER, min_size=1, max_size=4, unique=True))
    specs = [stage(draw, n, var_names, layout) for n in names]
    if draw(st.booleans()):
        targets = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2))
        chunks.append(layout.value_lines("default", targets, "", "        "))
    if draw(st.integers(0, 3)) == 0:
        chunks.append(layout.value_lines("include", ["sub/"], "", "  "))
    chunks += [s.lines for s in specs]
    order = draw(st.permutations(range(len(chunks))))
    # Assignments keep their order (a later one replaces an earlier one).
    lines: list[str] = layout.blank_lines(2) + layout.own_comments("")
    for i in order:
        lines += layout.blank_lines(3)
        lines += layout.own_comments("")
        lines += chunks[i]
    lines += layout.blank_lines(2) + layout.own_comments("")
    newline = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    text = newline.join(lines) + draw(st.sampled_from([newline, ""]))
    if draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    return Generated(text, names)


def shapes(module: Module) -> list[tuple[str, ...]]:
    """Each statement as (kind, name, field names...): what fmt must not reorder or drop."""
    out: list[tuple[str, ...]] = []
    for s in module.statements:
        if isinstance(s, StageDecl):
            out.append(("stage", s.name.text, *(f.name for f in s.fields)))
        else:
            out.append((type(s).__name__,))
    return out


def meaning(pipeline: Pipeline) -> tuple[object, ...]:
    stages = tuple(structs.replace(s, loc=Location(s.loc.path, 0, 0)) for s in pipeline.stages)
    return (
        pipeline.name,
        stages,
        tuple(t.text for t in pipeline.default),
        tuple(i.path for i in pipeline.includes),
        pipeline.params_files,
    )


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pair: list[Path] = []
    for side in ("before", "after"):
        root = tmp_path_factory.mktemp(side) / "proj"
        root.mkdir()
        (root / "params.toml").write_text(PARAMS_TOML)
        pair.append(root)
    return pair[0], pair[1]


@PROPERTY_SETTINGS
@given(pivotfiles())
def test_generated_pivotfiles_parse(gen: Generated) -> None:
    module = parse(gen.text)
    stages = [s for s in module.statements if isinstance(s, StageDecl)]
    assert sorted(s.name.text for s in stages) == sorted(gen.stage_names)
    for s in stages:
        assert sum(f.name == "run" for f in s.fields) == 1


@PROPERTY_SETTINGS
@given(pivotfiles())
def test_fmt_on_generated_pivotfiles_is_idempotent_and_keeps_everything(gen: Generated) -> None:
    before = parse(gen.text)
    once = format_module(before)
    after = parse(once)
    assert format_module(after) == once
    assert scripts(after) == scripts(before)
    assert [c.text for c in after.comments] == [c.text for c in before.comments]
    assert shapes(after) == shapes(before)
    # Canonical: LF only, no trailing whitespace, no runs of blank lines, space indentation.
    assert once.endswith("\n") and not once.startswith("\n")
    assert "\r" not in once and "\n\n\n" not in once
    for line in once.split("\n"):
        assert line == line.rstrip(), repr(line)
        assert "\t" not in line[: len(line) - len(line.lstrip(" \t"))], repr(line)


@PROPERTY_SETTINGS
@given(gen=pivotfiles())
def test_fmt_preserves_compiled_stages(gen: Generated, roots: tuple[Path, Path]) -> None:
    before_root, after_root = roots
    formatted = format_module(parse(gen.text))
    before = compile_text(gen.text, before_root)
    after = compile_text(formatted, after_root)
    assert meaning(after) == meaning(before)
    assert [s.name for s in before.stages]
