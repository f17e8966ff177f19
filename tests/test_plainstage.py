"""The plain stage (pivotbuild/pivotfile/plainstage.py): a fast path of the lexer and parser.

A stage in the plain form is made into its syntax record straight from its
lines; any other stage goes through terminals and the grammar.  Whichever way
a stage goes, `parse` must give the same result: the same records, comments
and positions, or the same errors.  These tests parse tricky texts both ways
(the fast path switched off by replacing it with one that never applies) and
check which stages took the fast path, so that they test it and not twice the
general path.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_pivotfile import SEEDS, Mutation, mutation

from pivotbuild import structs
from pivotbuild.errors import PivotfileError
from pivotbuild.pivotfile import compiler, lexer, plainstage
from pivotbuild.pivotfile.parser import parse
from pivotbuild.pivotfile.syntax import StageDecl

SETTINGS = settings(max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[list[StageDecl]]:
    """Parse with the fast path on (listing the stages it made) or off."""
    made: list[StageDecl] = []

    def recorded(*args: Any) -> Any:
        result = plainstage.plain_stage(*args) if enabled else None
        if result is not None:
            made.append(result[0].decl())
        return result

    with mock.patch.object(lexer, "plain_stage", recorded):
        yield made


def outcome(text: str) -> Any:
    """What `parse` gives: the module, or every diagnostic with its location, message and source line."""
    try:
        return parse(text)
    except PivotfileError as exc:
        return [(d.loc, d.message, d.source_line, d.severity) for d in exc.diagnostics]


def both_ways(text: str) -> list[StageDecl]:
    """Check the fast path changes nothing in what `text` parses to; the stages it made."""
    with fast_path(False):
        general = outcome(text)
    with fast_path(True) as made:
        fast = outcome(text)
    assert fast == general, text
    return made


def fast_names(text: str) -> list[str]:
    return [decl.name.text for decl in both_ways(text)]


# Each text: the stages that must take the fast path (the others must not).
TRICKY = {
    "plain, four spaces": (
        "stage a:\n    deps: src/a.txt ${X}/b $$c\n    outs: out/a.txt out/dir/\n    run: md5sum $^ > $@\n",
        ["a"],
    ),
    "tabs, a tab after 'stage', trailing blanks, spaces before a colon": (
        "stage\ta:  \n\tdeps :\tx\t y \n\trun:\t cat $< >$@ \t\n",
        ["a"],
    ),
    "blank and comment lines inside and after the block, at any column": (
        "stage a:\n\n    # one\n    deps: x\n# two\n        # three\n\n    run: cat\n\n# four\nstage b:\n    run: b\n",
        ["a", "b"],
    ),
    "every list and scalar field, an unknown field, empty lists": (
        "stage a:\n  desc: the first stage\n  deps:\n  params: train.lr\n  mutex: gpu\n  jobs: 2\n"
        "  mem: 4G\n  timeout: 1h\n  retry: 1\n  dir: sub\n  always: yes\n  depz: x\n  outs:\n  py: m:f\n",
        ["a"],
    ),
    "the last stage without a final newline, CRLF endings": (
        "stage a:\r\n    deps: x\r\n    run: echo a\r\nstage b:\r\n    run: echo b",
        ["a", "b"],
    ),
    "a word continued on a deeper line, past a comment": (
        "stage a:\n    deps: x\n    # c\n        y\n    run: cat\nstage b:\n    run: b\n",
        ["b"],
    ),
    "a backslash continuation, a quote, a comment after words": (
        "stage a:\n    deps: x \\\n      y\n    run: a\nstage b:\n    deps: 'x y'\n    run: b\n"
        "stage c:\n    deps: x # c\n    run: c\nstage d:\n    outs: x (persist)\n    run: d\n",
        [],
    ),
    "run: blocks: a block below, a deeper comment, a deeper line past a blank one, an empty run:": (
        "stage a:\n    run: echo\n        more\nstage b:\n    run: echo\n        # shell comment\n"
        "stage c:\n    run: echo\n\n      more\nstage d:\n    run:\n      echo\nstage e:\n    run:\n",
        [],
    ),
    "matrix and env stages": (
        "stage a:\n    matrix: m=x y\n    run: a\nstage b:\n    env: K=v\n    run: b\n",
        [],
    ),
    "indentation that changes, mixes tabs and spaces, or starts a field with no key": (
        "stage a:\n    deps: x\n  run: a\nstage b:\n \tdeps: x\n \trun: b\nstage c:\n    deps: x\n      run: c\n"
        "stage d:\n    deps: x\n\trun: d\nstage e:\n    x y\n    run: e\nstage f:\n  deps: x\n\t\trun: f\n",
        [],
    ),
    "a scalar field with two words or none, a key glued to its value": (
        "stage a:\n    jobs: 1 2\n    run: a\nstage b:\n    jobs:\n    run: b\nstage c:\n    deps:x\n    run: c\n",
        [],
    ),
    "headers the fast path leaves alone": (
        "stage a :\n    run: a\nstage 'b':\n    run: b\nstage c:d:\n    run: c\nstage:\n    run: d\n"
        "stage e: # c\n    run: e\nstage f@x:\n    run: f\nstage g:\nstage h:\n",
        [],
    ),
    "an error in the middle of a field, beside plain stages": (
        'stage a:\n    run: a\nstage b:\n    deps: x "unterminated y\n    run: b\nstage c:\n    run: c\n',
        ["a", "c"],
    ),
    "a NUL, a form feed, a BOM, unicode": (
        "\ufeffstage a:\n    deps: x\x00y \x0cz é\n    run: écho → $@\n",
        ["a"],
    ),
    "duplicate stages and fields (compiler errors, not syntax errors)": (
        "stage a:\n    deps: x\n    deps: y\n    run: a\nstage a:\n    run: b\n",
        ["a", "a"],
    ),
    "statements between stages": (
        "X = 1\nstage a:\n    run: a\npipeline p\ndefault a\n  stage b:\n    run: b\nstage c:\n    run: c\n",
        ["a", "c"],
    ),
}


@pytest.mark.parametrize("name", TRICKY)
def test_a_tricky_text_parses_the_same_with_and_without_the_fast_path(name: str) -> None:
    text, fast = TRICKY[name]
    assert fast_names(text) == fast


def test_the_seeds_of_the_fuzz_test_parse_the_same_both_ways() -> None:
    made = sum(len(both_ways(seed)) for seed in SEEDS)
    assert made > 100


@SETTINGS
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation(), min_size=1, max_size=6))
def test_a_mutated_pivotfile_parses_the_same_both_ways(seed: str, mutations: list[Mutation]) -> None:
    both_ways(mutated(seed, mutations))


def mutated(seed: str, mutations: list[Mutation]) -> str:
    """`seed` with the fuzz test's `mutations` applied in turn."""
    text = seed.encode()
    for mutate in mutations:
        text = mutate(text)
    return text.decode("utf-8", "replace")


# Lines a stage block may hold: plain ones, and ones that are not or that break the block.
PLAIN_LINES = [
    "deps: a b", "deps:", "deps: ${X}/a", "deps : a", "outs: o", "outs: o/ p", "run: cat $< > $@", "run: a # 'b",
    "jobs: 2", "py: m:f", "bogus: x", "# c", "", "deps: a\x0cb", "timeout: 1h", "run: echo ${stage}",
]  # fmt: skip
OTHER_LINES = [
    "deps: 'a b'", "deps: a # c", "deps: a \\", "deps:a", "outs: o (cache=false)", "outs: o(persist)", "run:",
    "jobs: 2 3", "jobs:", "matrix: m=a b", "env: K=v", "x y", 'desc: say "hi"', "deps: \\", "  more",
]  # fmt: skip


@st.composite
def stage_texts(draw: st.DrawFn) -> str:
    """A few stages built of those lines, mostly plain ones, in varied indentation."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        header = ["stage a:", "stage b:", "stage\tc:  ", "stage d :", "X = 1", "# top", ""]
        out.append(draw(st.sampled_from(header[:3] if draw(st.booleans()) else header)))
        indent = draw(st.sampled_from(["    ", "\t", "  "]))
        for _ in range(draw(st.integers(0, 5))):
            odd = draw(st.integers(0, 9)) == 0
            line = draw(st.sampled_from(OTHER_LINES if odd else PLAIN_LINES))
            deeper = draw(st.sampled_from(["  ", "\t", " \t"])) if draw(st.integers(0, 9)) == 0 else ""
            out.append(f"{indent}{deeper}{line}" if line else "")
    return "\n".join(out) + draw(st.sampled_from(["\n", "", "\n\n"]))


@SETTINGS
@given(text=stage_texts())
def test_generated_stages_parse_the_same_both_ways(text: str) -> None:
    both_ways(text)


def test_the_generated_stages_often_take_the_fast_path() -> None:
    """(So that the test above tests it.)"""
    taken = []

    @settings(max_examples=100, database=None, deadline=None)
    @given(text=stage_texts())
    def run(text: str) -> None:
        taken.append(bool(both_ways(text)))

    run()
    assert sum(taken) >= 10


# -- the compiler's reading of plain stages (compiler.compile_text) --------------------------


@contextlib.contextmanager
def counting_plain() -> Iterator[list[str]]:
    """Lists the stages the compiler read straight from their words (`PlainStages._plain`)."""
    read: list[str] = []
    real = compiler._Compiler._plain

    def counted(self: Any, p: plainstage.PlainStage, shell: tuple[str, ...]) -> Any:
        read.append(p.name)
        return real(self, p, shell)

    with mock.patch.object(compiler._Compiler, "_plain", counted):
        yield read


def compiled(text: str, root: Path, lean: bool) -> Any:
    """The pipeline compiled from `text` in `root` (lean: as a project compiles it), or every diagnostic."""
    options = compiler.CompileOptions(root, root, {"V": "v"})
    try:
        if lean:
            pipeline = compiler.compile_text(text, "Pivotfile", options)
        else:
            pipeline = compiler.compile_module(parse(text, "Pivotfile"), options)
        # (each compile stamps the params files it read: whether the racy window had passed may differ)
        return structs.replace(pipeline, inputs=()), [(i.path, i.hash) for i in pipeline.inputs]
    except PivotfileError as exc:
        return [(d.loc, d.message, d.source_line, d.severity) for d in exc.diagnostics]


def compiled_both_ways(text: str, root: Path) -> list[str]:
    """Check that a project's compile of `text` equals the compile of its syntax records; the stages read lean."""
    general = compiled(text, root, lean=False)
    with counting_plain() as read:
        lean = compiled(text, root, lean=True)
    assert lean == general, text
    return read


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = (tmp_path / "p").resolve()
    (root / "sub").mkdir(parents=True)
    (root / "params.toml").write_text("[train]\nlr = 0.1\n")
    (tmp_path / "outside").mkdir()
    (root / "away").symlink_to(tmp_path / "outside")
    return root


# Each text: the stages the compiler must read straight from their words.
COMPILED = {
    "the benchmark's form, a desc, a dep twice, a directory and a glob": (
        "stage a:\n    desc: the first\n    deps: src/a.txt src/a.txt data/ src/*.csv\n    outs: out/a.txt out/d/\n"
        "    run: md5sum $^ > $@\nstage b:\n    outs: o/b\n    deps: out/a.txt\n    run: md5sum $^ > $@\n",
        ["a", "b"],
    ),
    "commands that depend on the stage, a variable or a param": (
        "X = x\nstage a:\n    outs: a\n    run: echo ${stage} > $@\nstage b:\n    outs: b\n    run: echo ${X} ${V}\n"
        "stage c:\n    run: echo ${params.train.lr}\nstage d:\n    run: echo ${params.train.nope}\n"
        "stage e:\n    run: echo ${Y}\nstage f:\n    run: echo ${stage\n",
        ["a", "b", "c", "d", "e", "f"],
    ),
    "errors in deps and outs, each reported where the general path reports it": (
        "stage a:\n    deps: a**b c[d\n    outs: o/*.txt ../up .pivot/x Pivotfile Pivotfile.lock . o/x o/x\n"
        "    run: a\n"
        "stage b:\n    outs: away/x\n    deps: .\n    run: b\n",
        ["a", "b"],
    ),
    "a stage given twice, plain and not, and a plain one after a non-plain one": (
        "stage a:\n    run: a\nstage a:\n    run: again\nstage b:\n    matrix: m=x y\n    run: b\n"
        "stage b@x:\n    run: c\nstage c:\n    env: K=v\n    run: c\nstage c:\n    run: again\n",
        ["a"],
    ),
    "stages the compiler reads through their records": (
        "stage a:\n    deps: ${V}\n    run: a\nstage b:\n    run: b\n    jobs: 2\nstage c:\n    deps: x\n"
        "stage d:\n    deps: x\n    deps: y\n    run: d\nstage e:\n    bogus: x\n    run: e\n"
        "stage f:\n    desc: $$x\n    run: f\n"
        "stage g:\n    run: g\n    py: m:f\n",
        [],
    ),
}


@pytest.mark.parametrize("name", COMPILED)
def test_a_project_compiles_a_tricky_text_as_its_records_compile(name: str, project: Path) -> None:
    text, lean = COMPILED[name]
    assert compiled_both_ways(text, project) == lean


def test_a_pipeline_in_a_subdirectory_compiles_the_same_both_ways(project: Path) -> None:
    text = "stage a:\n    deps: ../params.toml x\n    outs: y ../z\n    run: cat $^ > $@\n"
    options = compiler.CompileOptions(project, project / "sub", {})
    lean = compiler.compile_text(text, "sub/Pivotfile", options)
    assert lean == compiler.compile_module(parse(text, "sub/Pivotfile"), options)
    assert [d.path for d in lean.stages[0].deps] == ["params.toml", "sub/x"]
    assert [o.path for o in lean.stages[0].outs] == ["sub/y", "z"]


def test_the_seeds_of_the_fuzz_test_compile_the_same_both_ways(project: Path) -> None:
    read = sum(len(compiled_both_ways(seed, project)) for seed in SEEDS)
    assert read > 50


@SETTINGS
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation(), min_size=1, max_size=6))
def test_a_mutated_pivotfile_compiles_the_same_both_ways(seed: str, mutations: list[Mutation]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        (root / "params.toml").write_text("[train]\nepochs = 3\nlr = 0.1\n")
        compiled_both_ways(mutated(seed, mutations), root)


@pytest.fixture(scope="module")
def bare_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root holding nothing (what compiling generated stages needs), one for all examples."""
    return tmp_path_factory.mktemp("bare").resolve()


@SETTINGS
@given(text=stage_texts())
def test_generated_stages_compile_the_same_both_ways(text: str, bare_root: Path) -> None:
    compiled_both_ways(text, bare_root)
