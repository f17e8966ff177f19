"""The Pivotfile parser: text -> syntax records, and located syntax errors.

These tests pin what `pivotbuild.pivotfile.parser.parse` gives for every
statement and field of the language (docs: /work/shared/spec/PIVOTFILE.md),
where each record says it came from, and how each syntax error is reported.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, src, where

from pivotbuild.errors import Diagnostic, Location, PivotfileError
from pivotbuild.pivotfile import lalr, parser, syntax
from pivotbuild.pivotfile.lalr_table import TABLE
from pivotbuild.pivotfile.parser import grammar_text, parse
from pivotbuild.pivotfile.syntax import (
    Assignment,
    Comment,
    DefaultStmt,
    Field,
    IncludeStmt,
    Module,
    PipelineStmt,
    Pos,
    Script,
    ScriptLine,
    StageDecl,
    Word,
)

SPEC = Path("/work/shared/spec/PIVOTFILE.md")


# -- helpers -----------------------------------------------------------------------


def parse_ok(text: str, path: str = "Pivotfile") -> Module:
    return parse(text, path)


def parse_errors(text: str, path: str = "Pivotfile") -> tuple[Diagnostic, ...]:
    with pytest.raises(PivotfileError) as info:
        parse(text, path)
    diags = info.value.diagnostics
    assert diags, "a PivotfileError must carry at least one diagnostic"
    return diags


def only_error(text: str) -> Diagnostic:
    diags = parse_errors(text)
    assert len(diags) == 1, [d.render() for d in diags]
    return diags[0]


def only_stage(text: str) -> StageDecl:
    module = parse_ok(text)
    stages = [s for s in module.statements if isinstance(s, StageDecl)]
    assert len(stages) == 1
    return stages[0]


def field_of(stage: StageDecl, name: str) -> Field:
    found = [f for f in stage.fields if f.name == name]
    assert len(found) == 1, f"expected one '{name}:' field in {stage.name.text}"
    return found[0]


def stage_field(text: str, name: str) -> Field:
    return field_of(only_stage(text), name)


def texts(words: tuple[Word, ...]) -> list[str]:
    return [w.text for w in words]


def raws(words: tuple[Word, ...]) -> list[str]:
    return [w.raw for w in words]


def places(words: tuple[Word, ...]) -> list[tuple[int, int]]:
    return [(w.pos.line, w.pos.col) for w in words]


def script_of(text: str) -> Script:
    script = stage_field(text, "run").script
    assert script is not None
    return script


# -- top-level statements ----------------------------------------------------------


def test_pipeline_statement() -> None:
    module = parse_ok("pipeline demo\n")
    assert module.statements == (PipelineStmt(Pos(1, 1), 1, Word("demo", "demo", Pos(1, 10))),)


@pytest.mark.parametrize(
    ("text", "value_cols"),
    [
        ("NAME = a b\n", [8, 10]),
        ("NAME=a b\n", [6, 8]),
        ("NAME =a b\n", [7, 9]),
        ("NAME= a b\n", [7, 9]),
        ("NAME   =   a    b\n", [12, 17]),
        ("NAME\t=\ta b\n", [8, 10]),
    ],
)
def test_assignment_with_and_without_spaces(text: str, value_cols: list[int]) -> None:
    (stmt,) = parse_ok(text).statements
    assert isinstance(stmt, Assignment)
    assert stmt.pos == Pos(1, 1)
    assert stmt.name == Word("NAME", "NAME", Pos(1, 1))
    assert texts(stmt.values) == ["a", "b"]
    assert places(stmt.values) == [(1, c) for c in value_cols]
    assert stmt.last_line == 1


def test_assignment_with_no_value_is_an_empty_list() -> None:
    (stmt,) = parse_ok("EMPTY =\n").statements
    assert isinstance(stmt, Assignment)
    assert stmt.name.text == "EMPTY"
    assert stmt.values == ()


def test_assignment_value_may_contain_equals_signs() -> None:
    (stmt,) = parse_ok("FLAGS = -Dx=1 a=b\n").statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["-Dx=1", "a=b"]


def test_shell_is_an_ordinary_assignment() -> None:
    (stmt,) = parse_ok("SHELL = bash -eu -o pipefail\n").statements
    assert isinstance(stmt, Assignment)
    assert stmt.name.text == "SHELL"
    assert texts(stmt.values) == ["bash", "-eu", "-o", "pipefail"]
    assert places(stmt.values) == [(1, 9), (1, 14), (1, 18), (1, 21)]


def test_later_assignments_are_all_kept_in_order() -> None:
    module = parse_ok("X = 1\nY = 2\nX = 3\n")
    assigns = [s for s in module.statements if isinstance(s, Assignment)]
    assert [(a.name.text, texts(a.values), a.pos.line) for a in assigns] == [
        ("X", ["1"], 1),
        ("Y", ["2"], 2),
        ("X", ["3"], 3),
    ]


def test_default_statement() -> None:
    (stmt,) = parse_ok("default report train@small-0.1\n").statements
    assert isinstance(stmt, DefaultStmt)
    assert stmt.pos == Pos(1, 1)
    assert texts(stmt.targets) == ["report", "train@small-0.1"]
    assert places(stmt.targets) == [(1, 9), (1, 16)]


def test_include_statement() -> None:
    (stmt,) = parse_ok("include sub/ other/Pivotfile\n").statements
    assert isinstance(stmt, IncludeStmt)
    assert stmt.pos == Pos(1, 1)
    assert texts(stmt.paths) == ["sub/", "other/Pivotfile"]
    assert places(stmt.paths) == [(1, 9), (1, 14)]


def test_stage_statement_and_its_block() -> None:
    text = src(
        """
        X = 1

        stage train:
            deps: a
            run: echo hi
        """
    )
    module = parse_ok(text)
    assert len(module.statements) == 2
    stage = module.statements[1]
    assert isinstance(stage, StageDecl)
    assert stage.pos == Pos(3, 1)
    assert stage.name == Word("train", "train", Pos(3, 7))
    assert [f.name for f in stage.fields] == ["deps", "run"]
    assert stage.last_line == 5


def test_stage_name_may_be_followed_by_a_spaced_colon() -> None:
    stage = only_stage("stage a :\n    run: x\n")
    assert stage.name.text == "a"
    assert [f.name for f in stage.fields] == ["run"]


def test_statements_keep_source_order_and_lines() -> None:
    text = src(
        """
        # header comment
        pipeline demo

        SRC = src
        default all
        include sub/

        stage a:
            run: x

        stage b:
            run: y
        """
    )
    module = parse_ok(text)
    kinds = [(type(s).__name__, s.pos.line) for s in module.statements]
    assert kinds == [
        ("PipelineStmt", 2),
        ("Assignment", 4),
        ("DefaultStmt", 5),
        ("IncludeStmt", 6),
        ("StageDecl", 8),
        ("StageDecl", 11),
    ]
    assert module.path == "Pivotfile"
    assert module.source == text


def test_stage_without_fields_parses() -> None:
    # The grammar allows a stage with no block (`stage: stage_header (_INDENT
    # field+ _DEDENT)?`); the compiler then says it has no run:.
    module = parse_ok("stage a:\n")
    assert module.statements == (StageDecl(Pos(1, 1), 1, Word("a", "a", Pos(1, 7)), ()),)


def test_stage_without_fields_followed_by_another_stage() -> None:
    module = parse_ok("stage a:\nstage b:\n    run: x\n")
    stages = [s for s in module.statements if isinstance(s, StageDecl)]
    assert [(s.name.text, len(s.fields)) for s in stages] == [("a", 0), ("b", 1)]


def test_the_module_path_is_kept() -> None:
    module = parse_ok("X = 1\n", path="sub/Pivotfile")
    assert module.path == "sub/Pivotfile"


def test_empty_and_comment_only_files() -> None:
    assert parse_ok("").statements == ()
    assert parse_ok("\n\n   \n").statements == ()
    module = parse_ok("# only a comment\n")
    assert module.statements == ()
    assert module.comments == (Comment("# only a comment", Pos(1, 1), own_line=True),)


# -- fields --------------------------------------------------------------------------

# One sample per field kind that keeps plain words: (line, words).
WORD_FIELDS: dict[str, tuple[str, list[str]]] = {
    "desc": ("desc: Clean the raw data", ["Clean", "the", "raw", "data"]),
    "deps": ("deps: data/raw.csv src/**/*.py models/", ["data/raw.csv", "src/**/*.py", "models/"]),
    "params": ("params: train.epochs other.toml:a.b", ["train.epochs", "other.toml:a.b"]),
    "py": ("py: pkg.mod:main", ["pkg.mod:main"]),
    "mutex": ("mutex: gpu *", ["gpu", "*"]),
    "jobs": ("jobs: 2", ["2"]),
    "mem": ("mem: 4G", ["4G"]),
    "timeout": ("timeout: 30m", ["30m"]),
    "retry": ("retry: 1", ["1"]),
    "dir": ("dir: sub/work", ["sub/work"]),
    "always": ("always: yes", ["yes"]),
}


def test_every_field_has_a_test_sample() -> None:
    other = {"outs", "run", "matrix", "env"}
    assert set(WORD_FIELDS) | other == set(syntax.FIELDS)


@pytest.mark.parametrize("name", sorted(WORD_FIELDS))
def test_word_fields(name: str) -> None:
    line, expected = WORD_FIELDS[name]
    text = f"stage s:\n    {line}\n    run: x\n"
    f = stage_field(text, name)
    assert f.key == Word(name, name, Pos(2, 5))
    assert f.known
    assert texts(f.words) == expected
    assert f.words[0].pos == Pos(2, 5 + len(name) + 2)
    assert f.last_line == 2
    assert f.outs == () and f.items == () and f.script is None


def test_word_positions_within_a_field() -> None:
    f = stage_field("stage s:\n    deps:   a  bb   c\n    run: x\n", "deps")
    assert places(f.words) == [(2, 13), (2, 16), (2, 21)]


@pytest.mark.parametrize(
    ("indent", "key_col"),
    [("    ", 5), ("  ", 3), (" ", 2), ("        ", 9), ("\t", 2), ("\t\t", 3)],
)
def test_field_positions_follow_the_block_indentation(indent: str, key_col: int) -> None:
    text = f"stage s:\n{indent}deps: a b\n{indent}run: go\n"
    stage = only_stage(text)
    deps = field_of(stage, "deps")
    assert deps.key.pos == Pos(2, key_col)
    assert places(deps.words) == [(2, key_col + 6), (2, key_col + 8)]
    script = field_of(stage, "run").script
    assert script is not None
    assert script.lines == (ScriptLine("go", Pos(3, key_col + 5)),)


def test_empty_list_fields_are_allowed() -> None:
    stage = only_stage("stage s:\n    deps:\n    desc:\n    run: x\n")
    assert field_of(stage, "deps").words == ()
    assert field_of(stage, "desc").words == ()


def test_a_field_given_twice_still_parses() -> None:
    # The compiler reports the duplicate with both lines.
    stage = only_stage("stage s:\n    deps: a\n    deps: b\n    run: x\n")
    assert [(f.name, texts(f.words)) for f in stage.fields] == [("deps", ["a"]), ("deps", ["b"]), ("run", [])]


@pytest.mark.parametrize("key", ["foo", "Deps", "dpes", "outputs", "run_after"])
def test_unknown_fields_parse_and_keep_their_words(key: str) -> None:
    stage = only_stage(f"stage s:\n    {key}: a 'b c'\n    run: x\n")
    f = stage.fields[0]
    assert f.name == key
    assert not f.known
    assert f.key.pos == Pos(2, 5)
    assert texts(f.words) == ["a", "b c"]


def test_the_compiler_rejects_an_unknown_field_with_a_suggestion(tmp_path: Path) -> None:
    from conftest import compile_text

    with pytest.raises(PivotfileError) as info:
        compile_text("stage s:\n    dpes: a\n    run: x\n", tmp_path)
    (diag,) = info.value.diagnostics
    assert where(diag) == (2, 5)
    assert "unknown field 'dpes:'" in diag.message
    assert "'deps'" in diag.message


def test_field_key_may_have_space_before_colon() -> None:
    f = stage_field("stage s:\n    deps : a\n    run: x\n", "deps")
    assert texts(f.words) == ["a"]


def test_a_colon_inside_a_value_is_a_plain_character() -> None:
    f = stage_field("stage s:\n    desc: note: read this\n    run: x\n", "desc")
    assert texts(f.words) == ["note:", "read", "this"]


# -- continuation lines ---------------------------------------------------------------


def test_value_continues_on_lines_indented_deeper_than_the_key() -> None:
    text = src(
        """
        stage report:
            deps: models/
                  build/clean.csv
            outs: reports/summary.json
                  reports/plots/ (cache=false)
            run: python report.py
        """
    )
    stage = only_stage(text)
    deps = field_of(stage, "deps")
    assert texts(deps.words) == ["models/", "build/clean.csv"]
    assert places(deps.words) == [(2, 11), (3, 11)]
    assert deps.last_line == 3
    outs = field_of(stage, "outs")
    assert [o.path.text for o in outs.outs] == ["reports/summary.json", "reports/plots/"]
    assert [o.path.pos for o in outs.outs] == [Pos(4, 11), Pos(5, 11)]
    assert outs.last_line == 5
    assert field_of(stage, "run").key.pos == Pos(6, 5)


@pytest.mark.parametrize("extra", [1, 2, 6, 20])
def test_continuation_needs_only_to_be_deeper(extra: int) -> None:
    pad = " " * (4 + extra)
    f = stage_field(f"stage s:\n    deps: a\n{pad}b c\n    run: x\n", "deps")
    assert texts(f.words) == ["a", "b", "c"]
    assert places(f.words)[1:] == [(3, 5 + extra), (3, 7 + extra)]


def test_value_may_start_on_the_next_line() -> None:
    f = stage_field("stage s:\n    deps:\n        a\n        b\n    run: x\n", "deps")
    assert texts(f.words) == ["a", "b"]
    assert places(f.words) == [(3, 9), (4, 9)]
    assert f.last_line == 4


def test_continuation_may_follow_a_blank_line() -> None:
    f = stage_field("stage s:\n    deps: a\n\n          b\n    run: x\n", "deps")
    assert texts(f.words) == ["a", "b"]
    assert f.words[1].pos == Pos(4, 11)


def test_a_line_at_the_key_indentation_starts_the_next_field() -> None:
    stage = only_stage("stage s:\n    deps: a\n    outs: b\n    run: x\n")
    assert [f.name for f in stage.fields] == ["deps", "outs", "run"]
    assert texts(field_of(stage, "deps").words) == ["a"]


def test_top_level_values_continue_on_indented_lines() -> None:
    (stmt,) = parse_ok("MODELS = small\n    large\n    huge\n").statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["small", "large", "huge"]
    assert places(stmt.values) == [(1, 10), (2, 5), (3, 5)]
    assert stmt.last_line == 3


def test_trailing_backslash_continues_a_field_value() -> None:
    f = stage_field("stage s:\n    deps: a \\\n      b \\\n  c\n    run: x\n", "deps")
    assert texts(f.words) == ["a", "b", "c"]
    assert places(f.words) == [(2, 11), (3, 7), (4, 3)]
    assert f.last_line == 4


def test_trailing_backslash_continues_a_top_level_statement() -> None:
    (stmt,) = parse_ok("X = a \\\nb c\n").statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["a", "b", "c"]
    assert places(stmt.values) == [(1, 5), (2, 1), (2, 3)]
    assert stmt.last_line == 2


def test_trailing_backslash_glued_to_a_word_continues() -> None:
    (stmt,) = parse_ok("X = a\\\nb\n").statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["a", "b"]


def test_backslash_inside_a_word_is_kept() -> None:
    (stmt,) = parse_ok("X = a\\b c\\\\d\n").statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["a\\b", "c\\\\d"]


def test_backslash_at_the_end_of_the_file() -> None:
    (stmt,) = parse_ok("X = a \\").statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["a"]


# -- comments ---------------------------------------------------------------------------


def test_comments_are_dropped_from_values_and_kept_in_the_module() -> None:
    text = src(
        """
        # top
        X = 1 2   # after X
        stage s:  # after header
            # inside the block
            deps: a  # after deps
                  b  # after b
            run: x
        # at the end
        """
    )
    module = parse_ok(text)
    assigns = [s for s in module.statements if isinstance(s, Assignment)]
    assert texts(assigns[0].values) == ["1", "2"]
    stage = only_stage(text)
    assert stage.name.text == "s"
    assert texts(field_of(stage, "deps").words) == ["a", "b"]
    assert module.comments == (
        Comment("# top", Pos(1, 1), own_line=True),
        Comment("# after X", Pos(2, 11), own_line=False),
        Comment("# after header", Pos(3, 11), own_line=False),
        Comment("# inside the block", Pos(4, 5), own_line=True),
        Comment("# after deps", Pos(5, 14), own_line=False),
        Comment("# after b", Pos(6, 14), own_line=False),
        Comment("# at the end", Pos(8, 1), own_line=True),
    )


def test_comment_text_has_trailing_whitespace_removed() -> None:
    module = parse_ok("X = 1  # note   \n#   own   \n")
    assert [c.text for c in module.comments] == ["# note", "#   own"]


def test_a_comment_may_be_glued_to_a_word() -> None:
    module = parse_ok("X = a#b\n")
    (stmt,) = module.statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["a"]
    assert module.comments == (Comment("#b", Pos(1, 6), own_line=False),)


def test_comment_lines_between_continuation_lines_are_kept() -> None:
    module = parse_ok("stage s:\n    deps: a\n        # between\n          b\n    run: x\n")
    stage = module.statements[0]
    assert isinstance(stage, StageDecl)
    assert texts(field_of(stage, "deps").words) == ["a", "b"]
    assert module.comments == (Comment("# between", Pos(3, 9), own_line=True),)


def test_a_comment_line_after_a_backslash_is_an_own_line_comment() -> None:
    # `own_line`: nothing but whitespace before the comment on its line.
    module = parse_ok("X = 1 \\\n  # note\nY = 2\n")
    assert [texts(s.values) for s in module.statements if isinstance(s, Assignment)] == [["1"], ["2"]]
    assert module.comments == (Comment("# note", Pos(2, 3), own_line=True),)


def test_hash_inside_quotes_is_not_a_comment() -> None:
    module = parse_ok('X = "a # b" \'c#d\' e"#"f\n')
    (stmt,) = module.statements
    assert isinstance(stmt, Assignment)
    assert texts(stmt.values) == ["a # b", "c#d", "e#f"]
    assert module.comments == ()


def test_hash_inside_run_scripts_belongs_to_the_shell() -> None:
    text = src(
        """
        stage s:
            run: echo "#x" # inline shell comment
        stage t:
            run:
                # a shell comment line
                echo hi  # trailing shell comment
            # a Pivotfile comment
        """
    )
    module = parse_ok(text)
    s, t = (st for st in module.statements if isinstance(st, StageDecl))
    s_script = field_of(s, "run").script
    t_script = field_of(t, "run").script
    assert s_script is not None and t_script is not None
    assert s_script.text == 'echo "#x" # inline shell comment'
    assert t_script.text == "# a shell comment line\necho hi  # trailing shell comment"
    assert module.comments == (Comment("# a Pivotfile comment", Pos(7, 5), own_line=True),)


# -- quoting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ('"a b"', "a b"),
        ("'x'", "x"),
        ("'a b c'", "a b c"),
        ('pre"a b"post', "prea bpost"),
        ("pre'a b'post", "prea bpost"),
        ('"q\\"q"', 'q"q'),
        ('"back\\\\slash"', "back\\slash"),
        ("'no\\\"escape'", 'no\\"escape'),
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ('""', ""),
        ('"${A} b"', "${A} b"),
        ('"a\tb"', "a\tb"),
    ],
)
def test_quoted_words(raw: str, text: str) -> None:
    (stmt,) = parse_ok(f"X = {raw} tail\n").statements
    assert isinstance(stmt, Assignment)
    first, tail = stmt.values
    assert first == Word(text, raw, Pos(1, 5))
    assert first.quoted
    assert tail.text == "tail"
    assert tail.pos == Pos(1, 5 + len(raw) + 1)
    assert not tail.quoted


def test_quoted_words_in_fields() -> None:
    f = stage_field("stage s:\n    deps: \"my file.csv\" 'x y' plain\n    run: x\n", "deps")
    assert texts(f.words) == ["my file.csv", "x y", "plain"]
    assert raws(f.words) == ['"my file.csv"', "'x y'", "plain"]
    assert places(f.words) == [(2, 11), (2, 25), (2, 31)]


# -- run: scripts -------------------------------------------------------------------------------


def test_inline_run_script() -> None:
    script = script_of("stage s:\n    run: python ${SRC}/prepare.py $< $@\n")
    assert script.inline
    assert script.lines == (ScriptLine("python ${SRC}/prepare.py $< $@", Pos(2, 10)),)
    assert script.text == "python ${SRC}/prepare.py $< $@"


def test_inline_run_script_position_skips_spaces() -> None:
    script = script_of("stage s:\n    run:    echo   hi   \n")
    assert script.lines == (ScriptLine("echo   hi", Pos(2, 13)),)


def test_block_run_script_keeps_relative_indentation_and_inner_blank_lines() -> None:
    text = src(
        """
        stage s:
            deps: a
            run:
                if true; then
                    echo one

                    echo two
                fi


            outs: b
        """
    )
    stage = only_stage(text)
    run = field_of(stage, "run")
    assert run.script is not None
    assert not run.script.inline
    assert run.script.lines == (
        ScriptLine("if true; then", Pos(4, 9)),
        ScriptLine("    echo one", Pos(5, 9)),
        ScriptLine("", Pos(6, 9)),
        ScriptLine("    echo two", Pos(7, 9)),
        ScriptLine("fi", Pos(8, 9)),
    )
    assert run.script.text == "if true; then\n    echo one\n\n    echo two\nfi"
    assert run.last_line == 8
    assert field_of(stage, "outs").key.pos == Pos(11, 5)


def test_block_script_trailing_blank_lines_are_dropped() -> None:
    script = script_of("stage s:\n    run:\n        a\n        b\n\n\n   \n")
    assert script.text == "a\nb"
    assert [line.pos.line for line in script.lines] == [3, 4]


def test_block_script_common_indentation_is_the_least_indented_line() -> None:
    script = script_of("stage s:\n    run:\n            deeper\n          less\n              most\n")
    assert script.text == "  deeper\nless\n    most"
    assert {line.pos.col for line in script.lines} == {11}


def test_block_script_keeps_backslashes_and_dollars_verbatim() -> None:
    text = src(
        """
        stage train:
            run:
                python train.py --lr ${lr} \\
                    --out $@ $$HOME "$1"
                echo done
        """
    )
    script = script_of(text)
    assert script.text == 'python train.py --lr ${lr} \\\n    --out $@ $$HOME "$1"\necho done'


def test_inline_script_continues_on_deeper_lines() -> None:
    script = script_of("stage s:\n    run: first \\\n        second\n          third\n    deps: x\n")
    assert script.inline
    assert script.lines == (
        ScriptLine("first \\", Pos(2, 10)),
        ScriptLine("second", Pos(3, 9)),
        ScriptLine("  third", Pos(4, 9)),
    )


def test_run_block_with_tabs() -> None:
    script = script_of("stage s:\n\trun:\n\t\tif x; then\n\t\t\ty\n\t\tfi\n")
    assert script.text == "if x; then\n\ty\nfi"
    assert [line.pos for line in script.lines] == [Pos(3, 3), Pos(4, 3), Pos(5, 3)]


def test_run_block_ends_at_the_next_field_or_statement() -> None:
    text = src(
        """
        stage a:
            run:
                one
            deps: x
        X = 1
        stage b:
            run:
                two
        """
    )
    module = parse_ok(text)
    a, assign, b = module.statements
    assert isinstance(a, StageDecl) and isinstance(b, StageDecl)
    assert isinstance(assign, Assignment)
    assert [f.name for f in a.fields] == ["run", "deps"]
    run_a = field_of(a, "run").script
    run_b = field_of(b, "run").script
    assert run_a is not None and run_b is not None
    assert run_a.text == "one"
    assert run_b.text == "two"
    assert a.last_line == 4


# -- outs: ----------------------------------------------------------------------------------


def test_outs_with_options() -> None:
    f = stage_field("stage s:\n    outs: x (cache=false, persist) y (incremental) z\n    run: r\n", "outs")
    assert [o.path.text for o in f.outs] == ["x", "y", "z"]
    assert [o.path.pos for o in f.outs] == [Pos(2, 11), Pos(2, 36), Pos(2, 52)]
    assert [texts(o.options) for o in f.outs] == [["cache=false", "persist"], ["incremental"], []]
    assert places(f.outs[0].options) == [(2, 14), (2, 27)]
    assert f.words == ()


@pytest.mark.parametrize(
    ("value", "options"),
    [
        ("x (persist)", ["persist"]),
        ("x ( persist )", ["persist"]),
        ("x (cache=false,persist)", ["cache=false", "persist"]),
        ("x (cache=false, persist,)", ["cache=false", "persist"]),
        ("x ()", []),
    ],
)
def test_outs_option_spellings(value: str, options: list[str]) -> None:
    f = stage_field(f"stage s:\n    outs: {value}\n    run: r\n", "outs")
    (out,) = f.outs
    assert out.path.text == "x"
    assert texts(out.options) == options


def test_outs_options_may_be_followed_by_a_comment() -> None:
    module = parse_ok("stage s:\n    outs: x (persist)  # keep it\n    run: r\n")
    stage = module.statements[0]
    assert isinstance(stage, StageDecl)
    (out,) = field_of(stage, "outs").outs
    assert texts(out.options) == ["persist"]
    assert [c.text for c in module.comments] == ["# keep it"]


# -- matrix: and env: ---------------------------------------------------------------------------


def test_matrix_items() -> None:
    f = stage_field("stage s:\n    matrix: model=${MODELS} lr=0.1 0.01\n    run: r\n", "matrix")
    assert [(i.key.text, texts(i.values)) for i in f.items] == [("model", ["${MODELS}"]), ("lr", ["0.1", "0.01"])]
    assert [i.key.pos for i in f.items] == [Pos(2, 13), Pos(2, 29)]
    assert places(f.items[1].values) == [(2, 32), (2, 36)]
    assert f.words == ()


def test_matrix_items_across_continuation_lines() -> None:
    f = stage_field("stage s:\n    matrix: a=1\n            b=2 3\n    run: r\n", "matrix")
    assert [(i.key.text, texts(i.values)) for i in f.items] == [("a", ["1"]), ("b", ["2", "3"])]
    assert f.items[1].key.pos == Pos(3, 13)
    assert f.last_line == 3


@pytest.mark.parametrize("field", ["matrix", "env"])
def test_key_equals_then_a_backslash_continues_the_entry(field: str) -> None:
    # `KEY=\` is not an empty value followed by a continuation: the values follow.
    f = stage_field(f"stage s:\n    {field}: A=\\\n        1\n    run: r\n", field)
    assert [(i.key.text, texts(i.values)) for i in f.items] == [("A", ["1"])]


def test_env_items() -> None:
    f = stage_field('stage s:\n    env: OMP_NUM_THREADS=2 EMPTY= MSG="x y" PATH=a:b\n    run: r\n', "env")
    assert [(i.key.text, texts(i.values)) for i in f.items] == [
        ("OMP_NUM_THREADS", ["2"]),
        ("EMPTY", []),
        ("MSG", ["x y"]),
        ("PATH", ["a:b"]),
    ]
    assert [i.key.pos.col for i in f.items] == [10, 28, 35, 45]
    assert f.items[2].values[0].raw == '"x y"'


# -- layout: tabs, CRLF, BOM ---------------------------------------------------------------


def test_tabs_as_indentation() -> None:
    text = "stage s:\n\tdeps: a\n\t\tb\n\trun:\n\t\techo hi\n"
    stage = only_stage(text)
    deps = field_of(stage, "deps")
    assert deps.key.pos == Pos(2, 2)
    assert places(deps.words) == [(2, 8), (3, 3)]
    script = field_of(stage, "run").script
    assert script is not None
    assert script.lines == (ScriptLine("echo hi", Pos(5, 3)),)


LF_SAMPLE = src(
    """
    # c
    X = 1 2  # t
    stage s:
        deps: a
              b
        run:
            echo "x y"

            echo z
    """
)


def test_crlf_line_endings_parse_like_lf() -> None:
    lf = parse_ok(LF_SAMPLE)
    crlf = parse_ok(LF_SAMPLE.replace("\n", "\r\n"))
    assert crlf.statements == lf.statements
    assert crlf.comments == lf.comments
    stage = crlf.statements[-1]
    assert isinstance(stage, StageDecl)
    script = field_of(stage, "run").script
    assert script is not None
    assert "\r" not in script.text
    assert script.text == 'echo "x y"\n\necho z'


def test_crlf_errors_have_no_carriage_return_in_the_source_line() -> None:
    diag = only_error("stage s:\r\n    deps x\r\n")
    assert where(diag) == (2, 5)
    assert diag.source_line == "    deps x"
    assert "\r" not in diag.render()


def test_a_byte_order_mark_is_ignored() -> None:
    plain = parse_ok(LF_SAMPLE)
    bom = parse_ok("\ufeff" + LF_SAMPLE)
    assert bom.statements == plain.statements
    assert bom.comments == plain.comments


def test_a_byte_order_mark_is_not_part_of_an_error_line() -> None:
    diag = only_error("\ufeffstag a:\n")
    assert where(diag) == (1, 1)
    assert diag.source_line == "stag a:"
    assert "\ufeff" not in diag.render()


# -- syntax errors -----------------------------------------------------------------------------

ERRORS: list[tuple[str, str, tuple[int, int], list[str]]] = [
    (
        "unknown statement",
        "stag x:\n    run: a\n",
        (1, 1),
        ["unknown statement 'stag'", "did you mean 'stage'?"],
    ),
    ("unknown keyword pipeline", "pipline demo\n", (1, 1), ["unknown statement 'pipline'", "'pipeline'"]),
    ("unknown keyword default", "defualt all\n", (1, 1), ["unknown statement 'defualt'", "'default'"]),
    ("two words then equals", "X Y = 1\n", (1, 1), ["unknown statement 'X'"]),
    ("missing colon after stage name", "stage y\n    run: b\n", (1, 8), ["expected ':' after the stage name"]),
    ("stage name of two words", "stage a b:\n    run: x\n", (1, 9), ["expected ':'", "one word"]),
    ("stage without name", "stage\n    run: x\n", (1, 6), ["expected a stage name after 'stage'"]),
    ("stage colon without name", "stage:\n    run: x\n", (1, 6), ["expected a stage name after 'stage'"]),
    ("NUL character", "X = a\x00b\n", (1, 6), ["NUL character"]),
    ("field without colon", "stage s:\n    deps x\n    run: y\n", (2, 5), ["missing ':' after 'deps'"]),
    (
        "misspelt field without colon",
        "stage s:\n    dpes x\n    run: y\n",
        (2, 5),
        ["expected a field", "did you mean", "'deps'"],
    ),
    ("bare word in block", "stage s:\n    x\n    run: y\n", (2, 5), ["expected a field such as 'deps:' or 'run:'"]),
    (
        "jobs with two values",
        "stage s:\n    jobs: 1 2\n    run: y\n",
        (2, 13),
        ["'jobs:' takes a single value", "'2'"],
    ),
    (
        "timeout with two values",
        "stage s:\n    timeout: 1 h\n    run: y\n",
        (2, 16),
        ["'timeout:' takes a single value"],
    ),
    ("jobs without a value", "stage s:\n    jobs:\n    run: y\n", (2, 10), ["'jobs:' needs a value"]),
    (
        "empty run before a field",
        "stage s:\n    run:\n    deps: x\n",
        (2, 9),
        ["'run:' is empty", "indented block"],
    ),
    ("empty run at end of file", "stage s:\n    deps: x\n    run:\n", (3, 9), ["'run:' is empty"]),
    ("matrix without KEY=", "stage s:\n    matrix: 1 2\n    run: y\n", (2, 13), ["'matrix:'", "KEY=VALUE", "'1'"]),
    ("empty matrix", "stage s:\n    matrix:\n    run: y\n", (2, 12), ["'matrix:' needs at least one KEY=VALUE"]),
    ("env without KEY=", "stage s:\n    env: FOO\n    run: y\n", (2, 10), ["'env:'", "KEY=VALUE"]),
    ("unterminated double quote", 'X = "abc\n', (1, 5), ['unterminated quote "']),
    ("unterminated single quote", "stage s:\n    deps: a 'b c\n    run: y\n", (2, 13), ["unterminated quote '"]),
    (
        "unclosed output options",
        "stage s:\n    outs: x (cache=false\n    run: y\n",
        (2, 25),
        ["missing ')' to close the output's options"],
    ),
    (
        # A `\` cannot continue options (the lexer once looped forever on it).
        "output options continued with a backslash",
        "stage s:\n    outs: x (persist, \\\n    run: y\n",
        (2, 23),
        ["missing ')' to close the output's options"],
    ),
    ("options without a path", "stage s:\n    outs: (x)\n    run: y\n", (2, 11), ["output options"]),
    (
        "inconsistent indentation",
        "stage s:\n    deps: a\n  run: x\n",
        (3, 1),
        ["inconsistent indentation", "4 spaces"],
    ),
    (
        "tab then spaces",
        "stage s:\n\tdeps: a\n    run: x\n",
        (3, 1),
        ["indentation mixes tabs and spaces"],
    ),
    ("tab and spaces on one line", "stage s:\n \tdeps: a\n \trun: x\n", (2, 1), ["mixes tabs and spaces"]),
    (
        "unexpected indentation at top level",
        "  X = 1\n",
        (1, 3),
        ["unexpected indentation", "first column"],
    ),
    (
        "unexpected indentation after a comment",
        "# c\n\tX = 1\n",
        (2, 2),
        ["unexpected indentation", "first column"],
    ),
    (
        "deeper line after a run block",
        "stage s:\n    run:\n        x\n# c\n        y\n",
        (5, 5),
        ["unexpected indentation", "continue a field's value"],
    ),
    ("pipeline without name", "pipeline\n", (1, 9), ["'pipeline' needs a value"]),
    ("pipeline with two names", "pipeline a b\n", (1, 12), ["'pipeline' takes one name", "'b'"]),
    ("default without targets", "default\n", (1, 8), ["'default' needs a value"]),
    ("include without path", "include\n", (1, 8), ["'include' needs a value"]),
]


@pytest.mark.parametrize(
    ("text", "at", "fragments"),
    [pytest.param(text, at, fragments, id=name) for name, text, at, fragments in ERRORS],
)
def test_syntax_errors_are_located_and_explained(text: str, at: tuple[int, int], fragments: list[str]) -> None:
    diag = only_error(text)
    assert where(diag) == at, diag.render()
    for fragment in fragments:
        assert fragment in diag.message, diag.message
    assert diag.loc.path == "Pivotfile"
    assert diag.source_line == text.split("\n")[at[0] - 1]


def test_error_messages_name_the_file_given() -> None:
    with pytest.raises(PivotfileError) as info:
        parse("stage s:\n    deps x\n", "pipelines/sub/Pivotfile")
    (diag,) = info.value.diagnostics
    assert diag.loc == Location("pipelines/sub/Pivotfile", 2, 5)
    assert diag.render().startswith("pipelines/sub/Pivotfile:2:5: error: missing ':' after 'deps'")
    assert "pipelines/sub/Pivotfile" in str(info.value)


def test_a_pivotfile_error_is_a_pivot_error_with_exit_code_2() -> None:
    with pytest.raises(PivotfileError) as info:
        parse("stag x:\n")
    assert info.value.exit_code == 2
    assert str(info.value) == "1 error in Pivotfile; fix the Pivotfile and run again"


MANY_ERRORS = src(
    """
    stag x:
        run: a
    stage y
        run: b
    stage z:
        deps x
        jobs: 1 2
        run:
        matrix: 1 2
    X = "unterminated
    stage ok:
        run: fine
    stage w:
        outs: a (persist
        run: c
    """
)


def test_every_error_in_a_file_is_reported_at_once() -> None:
    diags = parse_errors(MANY_ERRORS)
    assert [where(d) for d in diags] == [(1, 1), (3, 8), (6, 5), (7, 13), (8, 9), (9, 13), (10, 5), (14, 21)]
    messages = [d.message for d in diags]
    assert "did you mean 'stage'?" in messages[0]
    assert "expected ':' after the stage name" in messages[1]
    assert messages[2] == "missing ':' after 'deps'"
    assert "takes a single value" in messages[3]
    assert "'run:' is empty" in messages[4]
    assert "KEY=VALUE" in messages[5]
    assert "unterminated quote" in messages[6]
    assert "missing ')'" in messages[7]
    with pytest.raises(PivotfileError) as info:
        parse(MANY_ERRORS)
    assert str(info.value).startswith("8 errors in Pivotfile")


def test_errors_in_separate_stages_are_all_reported() -> None:
    text = "stage a:\n    deps x\n    run: y\nstage b:\n    outs y\n    run: z\nstage c:\n    run:\n"
    diags = parse_errors(text)
    assert [where(d) for d in diags] == [(2, 5), (5, 5), (8, 9)]
    assert [d.message for d in diags[:2]] == ["missing ':' after 'deps'", "missing ':' after 'outs'"]


def test_at_most_one_error_per_line() -> None:
    diags = parse_errors("stage s:\n    deps: 'a \"b\n    run: x\n")
    assert [d.loc.line for d in diags] == [2]


# -- rendering -----------------------------------------------------------------------------


def test_render_shows_location_line_and_caret() -> None:
    diag = only_error("stage s:\n    deps x\n    run: y\n")
    assert diag.render() == "Pivotfile:2:5: error: missing ':' after 'deps'\n        deps x\n        ^"


def test_render_caret_under_a_later_column() -> None:
    diag = only_error("stage s:\n    jobs: 1 2\n    run: y\n")
    head, line, caret = diag.render().split("\n")
    assert head.startswith("Pivotfile:2:13: error: 'jobs:' takes a single value")
    assert line == "        jobs: 1 2"
    assert caret == "    " + " " * 12 + "^"
    assert line[caret.index("^")] == "2"


def test_render_keeps_tabs_before_the_caret() -> None:
    diag = only_error('stage s:\n\tdeps: x  "y\n')
    assert where(diag) == (2, 11)
    assert diag.render() == (
        'Pivotfile:2:11: error: unterminated quote ": close it on the same line\n    \tdeps: x  "y\n    \t         ^'
    )


def test_render_without_a_source_line_is_one_line() -> None:
    diag = Diagnostic(Location("P", 3, 4), "boom")
    assert diag.render() == "P:3:4: error: boom"


def test_pivotfile_error_render_lists_every_diagnostic() -> None:
    with pytest.raises(PivotfileError) as info:
        parse("stag x:\nstage y\n    run: b\n")
    rendered = info.value.render()
    assert rendered.count(": error: ") == 2
    lines = rendered.split("\n")
    assert lines[0].startswith("Pivotfile:1:1: error: unknown statement 'stag'")
    assert lines[1:3] == ["    stag x:", "    ^"]
    assert lines[3] == "Pivotfile:2:8: error: expected ':' after the stage name"
    assert lines[4:6] == ["    stage y", "           ^"]


# -- the spec's examples and the grammar ----------------------------------------------------------


def spec_pivotfiles() -> list[str]:
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", SPEC.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [b for b in blocks if b.startswith("# Pivotfile") or re.search(r"^stage ", b, flags=re.M)]


def test_the_spec_has_pivotfile_examples() -> None:
    assert spec_pivotfiles(), f"no Pivotfile example found in {SPEC}"


@pytest.mark.parametrize("index", range(len(spec_pivotfiles())))
def test_every_spec_example_parses(index: int) -> None:
    text = spec_pivotfiles()[index]
    module = parse_ok(text)
    assert any(isinstance(s, StageDecl) for s in module.statements)


def test_the_spec_example_in_detail() -> None:
    module = parse_ok(spec_pivotfiles()[0])
    stages = {s.name.text: s for s in module.statements if isinstance(s, StageDecl)}
    assert list(stages) == ["prepare", "train", "report", "lint"]
    train = stages["train"]
    assert [f.name for f in train.fields] == [
        "matrix",
        "deps",
        "outs",
        "params",
        "mutex",
        "jobs",
        "mem",
        "timeout",
        "retry",
        "env",
        "run",
    ]
    run = field_of(train, "run").script
    assert run is not None and not run.inline
    assert run.text.splitlines() == [
        "python ${SRC}/train.py --model ${model} --lr ${lr} \\",
        "    --epochs ${params.train.epochs} --out $@",
        "echo trained ${model}",
    ]
    report_outs = field_of(stages["report"], "outs").outs
    assert [(o.path.text, texts(o.options)) for o in report_outs] == [
        ("reports/summary.json", []),
        ("reports/plots/", ["cache=false"]),
    ]
    trailing = [c for c in module.comments if not c.own_line]
    assert len(trailing) == 9
    assert {c.pos.col for c in trailing} == {37}


def test_grammar_declares_one_key_terminal_per_field() -> None:
    text = grammar_text()
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    declared: set[str] = set()
    for line in code.splitlines():
        if line.strip().startswith("%declare"):
            declared.update(re.findall(r"\b[A-Z_]+_KEY\b", line))
    assert "UNKNOWN_KEY" in declared
    assert declared - {"UNKNOWN_KEY"} == {f.upper() + "_KEY" for f in syntax.FIELDS}


def test_grammar_uses_every_field_key_in_a_rule() -> None:
    code = "\n".join(line.split("//", 1)[0] for line in grammar_text().splitlines())
    rules = "\n".join(line for line in code.splitlines() if not line.strip().startswith("%"))
    for f in syntax.FIELDS:
        assert re.search(rf"\b{f.upper()}_KEY\b", rules), f"{f.upper()}_KEY is declared but no rule uses it"


def test_the_checkout_grammar_is_the_one_parsed() -> None:
    assert grammar_text() == (REPO / "grammar" / "pivotfile.lark").read_text(encoding="utf-8")


# -- the LALR table ------------------------------------------------------------------


def test_the_generated_lalr_table_is_the_one_lark_builds_from_the_grammar() -> None:
    # If this fails after editing the grammar: python -m pivotbuild.pivotfile.lalr
    assert lalr.from_lark(parser.lark_parser(), grammar_text()) == TABLE


def test_an_edited_grammar_is_parsed_with_a_table_built_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "x = 1\nstage a:\n    deps: in.txt\n    outs: o.txt (persist) log.txt (cache=false)\n    run: cp $< $@\n"
    expected = parse_ok(text)
    edited = grammar_text().replace("out: WORD [out_options]", "out: WORD [out_options]\n// an edit")
    monkeypatch.setattr(parser, "grammar_text", lambda: edited)
    caches = (parser._table, parser.lark_parser, parser._shape)
    for cache in caches:
        cache.cache_clear()
    try:
        assert parser._table() is not TABLE
        assert parse_ok(text) == expected
    finally:
        for cache in caches:
            cache.cache_clear()


def test_a_pivotfile_that_parses_does_not_import_lark_and_one_that_does_not_is_explained_by_it() -> None:
    code = """
import sys
from pivotbuild.errors import PivotfileError
from pivotbuild.pivotfile.parser import parse
parse("x = a b\\ndefault a\\nstage a:\\n    outs: o (persist)\\n    matrix: k=1 2\\n    run: echo $@\\n")
print("lark" in sys.modules)
try:
    parse("stage a:\\n    deps\\n    run: x\\n")
except PivotfileError as exc:
    print("lark" in sys.modules, exc.diagnostics[0].message)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == "False\nTrue missing ':' after 'deps'\n"
