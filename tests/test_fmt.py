"""`pivotbuild fmt`: canonical layout that keeps comments, scripts and meaning.

`format_module` is tested on exact outputs for each layout rule, then on a
corpus of Pivotfiles for the properties every formatting must have:
idempotence, unchanged run scripts, kept comments and unchanged compiled
stages.  The last tests run the real `pivotbuild fmt` command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project, compile_text
from helpers import PARAMS_TOML, SPEC_EXAMPLE, scripts, src

from pivotbuild import structs
from pivotbuild.errors import Location
from pivotbuild.model import Pipeline, Stage
from pivotbuild.pivotfile.fmt import FormatterBug, _Formatter, format_module
from pivotbuild.pivotfile.parser import parse
from pivotbuild.pivotfile.syntax import Assignment, Module

# The complete example of the language spec (PIVOTFILE.md), copied.


# -- helpers ---------------------------------------------------------------------------


def fmt(text: str) -> str:
    return format_module(parse(text))


def comment_texts(module: Module) -> list[str]:
    return [c.text for c in module.comments]


def without_locations(stage: Stage) -> Stage:
    return structs.replace(stage, loc=Location(stage.loc.path, 0, 0), py_loc=None)


def meaning(pipeline: Pipeline) -> tuple[object, ...]:
    """Everything a compiled Pivotfile says, minus where it was said."""
    return (
        pipeline.name,
        pipeline.dir,
        pipeline.file,
        tuple(without_locations(s) for s in pipeline.stages),
        tuple(t.text for t in pipeline.default),
        tuple(i.path for i in pipeline.includes),
        pipeline.params_files,
    )


def spec_example() -> str:
    return SPEC_EXAMPLE.read_text(encoding="utf-8")


# -- canonical layout: exact outputs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("X=1\n", "X = 1\n"),
        ("X   =   1\n", "X = 1\n"),
        ("X =1\n", "X = 1\n"),
        ("X= 1 2\n", "X = 1 2\n"),
        ("X\t=\ta\t b\n", "X = a b\n"),
        ("X =\n", "X =\n"),
        ("X=\n", "X =\n"),
        ("pipeline    demo\n", "pipeline demo\n"),
        ("default   a    b\n", "default a b\n"),
        ("include  sub/   other/\n", "include sub/ other/\n"),
        ("SHELL=bash   -eu -o  pipefail\n", "SHELL = bash -eu -o pipefail\n"),
    ],
)
def test_top_level_statements_use_single_spaces(text: str, expected: str) -> None:
    assert fmt(text) == expected


@pytest.mark.parametrize("indent", [" ", "  ", "   ", "        ", "\t", "\t\t"])
def test_fields_are_indented_by_four_spaces(indent: str) -> None:
    text = f"stage a:\n{indent}deps:   x    y\n{indent}outs: z\n{indent}run:   echo hi\n"
    assert fmt(text) == "stage a:\n    deps: x y\n    outs: z\n    run: echo hi\n"


def test_stage_header_is_normalised() -> None:
    assert fmt("stage a :\n    run: x\n") == "stage a:\n    run: x\n"


def test_every_field_kind_on_one_line() -> None:
    text = src(
        """
        stage train:
          desc:   Train   the model
          matrix:  model=small   large  lr=0.1
          deps:  a.csv   b.csv
          outs:  m.pkl  (cache=false,persist)   log/ ( persist )
          params:   train.epochs
          py:   pkg.mod:main
          mutex:  gpu   *
          jobs:  2
          mem:  4G
          timeout:  30m
          retry:  1
          env:  A=1   B="x y"   C=
          dir:  sub
          always:  yes
          unknown:  kept   as  written
        """
    )
    assert fmt(text) == src(
        """
        stage train:
            desc: Train the model
            matrix: model=small large lr=0.1
            deps: a.csv b.csv
            outs: m.pkl (cache=false, persist) log/ (persist)
            params: train.epochs
            py: pkg.mod:main
            mutex: gpu *
            jobs: 2
            mem: 4G
            timeout: 30m
            retry: 1
            env: A=1 B="x y" C=
            dir: sub
            always: yes
            unknown: kept as written
        """
    )


def test_empty_options_are_dropped() -> None:
    assert fmt("stage a:\n    outs: x ()\n    run: r\n") == "stage a:\n    outs: x\n    run: r\n"


def test_words_are_printed_as_written() -> None:
    text = 'X = "a b"  \'x\'   pre"a b"post   "q\\"q"  ${A}  $$B\n'
    assert fmt(text) == 'X = "a b" \'x\' pre"a b"post "q\\"q" ${A} $$B\n'


def test_continuation_lines_align_under_the_first_value() -> None:
    text = src(
        """
        MODELS = small
          large
        stage report:
          deps: models/
                  build/clean.csv   more.csv
          outs:  a.json
             plots/ (cache=false)
          matrix: a=1 2
               b=3
          run: x
        """
    )
    assert fmt(text) == src(
        """
        MODELS = small
                 large

        stage report:
            deps: models/
                  build/clean.csv more.csv
            outs: a.json
                  plots/ (cache=false)
            matrix: a=1 2
                    b=3
            run: x
        """
    )


def test_a_value_starting_on_the_next_line_stays_there() -> None:
    text = "stage a:\n    deps:\n        x\n        y\n    run: r\n"
    assert fmt(text) == "stage a:\n    deps:\n          x\n          y\n    run: r\n"


def test_backslash_continuations_become_aligned_continuation_lines() -> None:
    text = src(
        """
        FLAGS = -O2 \\
        -Wall \\
              -Wextra
        stage a:
            deps: a \\
          b c \\
        d
            run: r
        """
    )
    assert fmt(text) == src(
        """
        FLAGS = -O2
                -Wall
                -Wextra

        stage a:
            deps: a
                  b c
                  d
            run: r
        """
    )


def test_one_blank_line_around_stages() -> None:
    text = "X = 1\nstage a:\n    run: x\nstage b:\n    run: y\nY = 2\n"
    assert fmt(text) == "X = 1\n\nstage a:\n    run: x\n\nstage b:\n    run: y\n\nY = 2\n"


def test_many_blank_lines_between_stages_become_one() -> None:
    text = "stage a:\n    run: x\n\n\n\n\nstage b:\n    run: y\n"
    assert fmt(text) == "stage a:\n    run: x\n\nstage b:\n    run: y\n"


def test_at_most_one_blank_line_elsewhere() -> None:
    assert fmt("X = 1\n\n\n\nY = 2\n") == "X = 1\n\nY = 2\n"
    assert fmt("X = 1\nY = 2\n") == "X = 1\nY = 2\n"
    assert fmt("X = 1\n\nY = 2\nZ = 3\n") == "X = 1\n\nY = 2\nZ = 3\n"


def test_blank_lines_inside_a_stage_block_are_removed() -> None:
    text = "stage a:\n\n    deps: x\n\n\n    run: y\n"
    assert fmt(text) == "stage a:\n    deps: x\n    run: y\n"


def test_leading_and_trailing_blank_lines_are_removed() -> None:
    assert fmt("\n\n\nX = 1\n\n\n\n") == "X = 1\n"


def test_output_ends_with_one_newline() -> None:
    assert fmt("X = 1") == "X = 1\n"
    assert fmt("stage a:\n    run: x") == "stage a:\n    run: x\n"


def test_empty_file_stays_empty() -> None:
    assert fmt("") == ""
    assert fmt("\n\n  \n") == ""


def test_crlf_becomes_lf() -> None:
    assert fmt("X=1\r\nstage a:\r\n  run: echo hi\r\n") == "X = 1\n\nstage a:\n    run: echo hi\n"


def test_byte_order_mark_is_dropped() -> None:
    assert fmt("\ufeffX=1\n") == "X = 1\n"


# -- comments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("X = 1 # c\n", "X = 1  # c\n"),
        ("X=1 # c\n", "X = 1  # c\n"),
        ("X = a#b\n", "X = a  #b\n"),
        ("X = # nothing\n", "X =  # nothing\n"),
        ("pipeline p # name\n", "pipeline p  # name\n"),
        ("stage a: # hdr\n    run: x\n", "stage a:  # hdr\n    run: x\n"),
        ("stage a:\n    deps: x #c\n    run: y\n", "stage a:\n    deps: x  #c\n    run: y\n"),
        ("stage a:\n    deps: # none\n    run: y\n", "stage a:\n    deps:  # none\n    run: y\n"),
        ("stage a:\n    outs: x (persist) # o\n    run: y\n", "stage a:\n    outs: x (persist)  # o\n    run: y\n"),
        ("stage a:\n  deps: x  # c\n  run: y\n", "stage a:\n    deps: x  # c\n    run: y\n"),
        ("stage a:\n    run: # c\n        y\n", "stage a:\n    run:  # c\n        y\n"),
    ],
)
def test_a_trailing_comment_too_close_to_the_code_gets_two_spaces(text: str, expected: str) -> None:
    assert fmt(text) == expected
    assert fmt(expected) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("X = 1            # c\n", "X = 1            # c\n"),
        ("X=1              # c\n", "X = 1            # c\n"),
        ("X   =   1        # c\n", "X = 1            # c\n"),
        ("X = 1\t# c\n", "X = 1   # c\n"),
        ("X = 1\t\t# c\n", "X = 1           # c\n"),
        ("X =   # nothing\n", "X =   # nothing\n"),
        ("stage a:     # hdr\n    run: x\n", "stage a:     # hdr\n    run: x\n"),
        ("stage a:\n    deps:   # none\n    run: y\n", "stage a:\n    deps:   # none\n    run: y\n"),
        ("stage a:\n  deps: x      # c\n  run: y\n", "stage a:\n    deps: x    # c\n    run: y\n"),
        ("stage a:\n    run:        # c\n        y\n", "stage a:\n    run:        # c\n        y\n"),
    ],
)
def test_a_trailing_comment_keeps_its_column_when_the_code_leaves_room(text: str, expected: str) -> None:
    assert fmt(text) == expected
    assert fmt(expected) == expected


def test_aligned_trailing_comments_stay_aligned() -> None:
    # The layout of docs/language.md and PIVOTFILE.md: comments aligned across a
    # block, some on continuation lines, with blank lines and other lines between.
    text = src(
        """
        pipeline demo                       # optional; default: the directory's name
        SRC=src                             # shrinks: the comment stays put
        MODELS   =   small large

        default report                      # optional; default: every stage

        stage report:
          deps: models/                     # a directory: its whole tree is hashed
                build/clean.csv             # the input
          outs: reports/summary.json
                reports/plots/ (cache=false)   # not cached
          jobs: 2                           # job-server tokens
          run: python ${SRC}/report.py      # inside run:, this belongs to the shell
        """
    )
    assert fmt(text) == src(
        """
        pipeline demo                       # optional; default: the directory's name
        SRC = src                           # shrinks: the comment stays put
        MODELS = small large

        default report                      # optional; default: every stage

        stage report:
            deps: models/                   # a directory: its whole tree is hashed
                  build/clean.csv           # the input
            outs: reports/summary.json
                  reports/plots/ (cache=false)  # not cached
            jobs: 2                         # job-server tokens
            run: python ${SRC}/report.py      # inside run:, this belongs to the shell
        """
    )


def test_a_tab_aligned_block_of_comments_stays_aligned() -> None:
    # A tab reaches the next multiple of eight columns, as a terminal shows it.
    text = "stage a:\n\tdeps: x\t\t# one\n\touts: yyyyyyy\t# two\n\trun: r\n"
    out = fmt(text)
    assert out == "stage a:\n    deps: x             # one\n    outs: yyyyyyy       # two\n    run: r\n"
    assert fmt(out) == out


def test_comments_on_continued_entries_are_kept() -> None:
    # An entry whose values, or whose options, continue on the next line keeps
    # that line, its comments, and its meaning.
    text = src(
        """
        stage a:
            matrix: m=a b  # one
                    c      # two
                    n=     # three
                    x
            env: A=1 \\
            # four
                 B=2       # five
            outs: o \\
                  (persist)  # six
            run: r
        """
    )
    out = fmt(text)
    assert comment_texts(parse(out)) == ["# one", "# two", "# three", "# four", "# five", "# six"]
    assert fmt(out) == out
    assert out == src(
        """
        stage a:
            matrix: m=a b  # one
                    c      # two
                    n=     # three
                    x
            env: A=1
                 # four
                 B=2       # five
            outs: o
                  (persist)  # six
            run: r
        """
    )


def test_comments_on_a_continued_stage_header_are_kept() -> None:
    text = "stage \\\n  a \\\n  :  # one\n    run: r  # two\n"
    out = fmt(text)
    assert out == "stage a:  # one\n    run: r  # two\n"
    assert comment_texts(parse(out)) == comment_texts(parse(text))


def test_comments_keep_their_place() -> None:
    text = src(
        """
        # Pivotfile for the demo

        # variables
        X = 1   # one
        # about stage a
        stage a:   # header
        # misplaced, but inside the block
          # first field next
          deps: x   # first dep
                y   # second dep
          # before run
          run:
              echo hi
          # after the script
        # about stage b
        stage b:
          run: y
        # the end

        # really the end
        """
    )
    out = fmt(text)
    assert out == src(
        """
        # Pivotfile for the demo

        # variables
        X = 1   # one

        # about stage a
        stage a:   # header
            # misplaced, but inside the block
            # first field next
            deps: x  # first dep
                  y  # second dep
            # before run
            run:
                echo hi
            # after the script

        # about stage b
        stage b:
            run: y

        # the end
        # really the end
        """
    )
    assert comment_texts(parse(out)) == comment_texts(parse(text))


def test_a_comment_only_file_is_kept() -> None:
    assert fmt("# one\n# two\n") == "# one\n# two\n"
    assert fmt("   # indented\n") == "# indented\n"


def test_comment_lines_between_continuation_lines_are_kept() -> None:
    # docs/language.md: "a comment between continuation lines is fine".
    text = "stage a:\n    deps: x\n        # between\n          y\n    run: r\n"
    out = fmt(text)
    assert "# between" in out
    assert comment_texts(parse(out)) == ["# between"]
    assert fmt(out) == out


def test_comment_after_a_backslash_continuation_is_kept() -> None:
    text = "X = 1 \\\n# note\nY = 2\n"
    out = fmt(text)
    assert "# note" in out
    assert comment_texts(parse(out)) == ["# note"]


def test_a_word_ending_in_a_literal_backslash_keeps_its_meaning() -> None:
    # The line `X = a\\` is the word `a\` followed by a continuation backslash.
    text = "X = a\\\\\n    b\n"
    (before,) = parse(text).statements
    assert isinstance(before, Assignment)
    assert [w.text for w in before.values] == ["a\\", "b"]
    (after,) = parse(fmt(text)).statements
    assert isinstance(after, Assignment)
    assert [w.text for w in after.values] == ["a\\", "b"]


def test_hash_in_scripts_and_quotes_is_not_moved() -> None:
    text = 'X = "a # b"\nstage a:\n    run: echo 1   # shell\n'
    assert fmt(text) == 'X = "a # b"\n\nstage a:\n    run: echo 1   # shell\n'


def test_the_spec_example_is_already_formatted() -> None:
    assert fmt(spec_example()) == spec_example()


@pytest.mark.parametrize(
    "wrong",
    [
        "X = 1\n",  # the comment dropped
        "X = 2  # c\n",  # a value changed
        "X = 1  # c\nstage a:\n",  # a stage added
        "X = 1  # c\n  bad\n",  # does not parse
    ],
)
def test_a_formatting_that_reads_differently_is_refused(wrong: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard behind "fmt never loses a comment": were the layout code wrong,
    # fmt would stop (an internal error, exit 3) rather than write the file.
    monkeypatch.setattr(_Formatter, "run", lambda self: wrong)
    with pytest.raises(FormatterBug, match="Pivotfile"):
        format_module(parse("X = 1  # c\n"))


# -- run scripts ----------------------------------------------------------------------------------


def test_inline_script_text_is_unchanged() -> None:
    text = "stage a:\n  run:    python x.py  --flag   $< $@\n"
    assert fmt(text) == "stage a:\n    run: python x.py  --flag   $< $@\n"


def test_block_script_is_reindented_with_relative_indentation_kept() -> None:
    text = src(
        """
        stage a:
          run:
                    if true; then
                        echo "a  b"   # shell comment

                        echo \\
                          two
                    fi


          deps: x
        """
    )
    assert fmt(text) == src(
        """
        stage a:
            run:
                if true; then
                    echo "a  b"   # shell comment

                    echo \\
                      two
                fi
            deps: x
        """
    )


def test_inline_script_with_continuation_lines() -> None:
    text = "stage a:\n  run: first \\\n          second\n            third\n"
    assert fmt(text) == "stage a:\n    run: first \\\n        second\n          third\n"


def test_tab_indented_script() -> None:
    text = "stage a:\n\trun:\n\t\tif x; then\n\t\t\ty\n\t\tfi\n"
    out = fmt(text)
    assert scripts(parse(out)) == scripts(parse(text)) == [("a", "if x; then\n\ty\nfi", False)]
    assert out.startswith("stage a:\n    run:\n        if x; then\n")


def test_no_trailing_whitespace_in_output() -> None:
    out = fmt("stage a:\n    run:\n        x\n        \n        y\nX = 1   \n")
    assert all(line == line.rstrip() for line in out.split("\n"))


# -- properties on a corpus -------------------------------------------------------------------------

CORPUS: dict[str, str] = {
    "minimal": "stage a:\n    run: x\n",
    "assignments": "X=1\nY =  a b c\nZ=\nX = 3\n",
    "messy": src(
        """


        # lead
        pipeline    demo   # name
        SRC=src
        MODELS = small
           large



        default   report
        stage prepare:   # prep
          desc:   Clean   the data
          deps:   data/raw.csv   ${SRC}/prepare.py
          outs:   build/clean.csv
          run:   python ${SRC}/prepare.py $< $@
        stage train:
            matrix:   model=${MODELS}   lr=0.1 0.01
            deps: build/clean.csv \\
                  ${SRC}/train.py
            outs: models/${model}-${lr}.pkl (persist)
            params: train.epochs
            env: A=1 B="x y"
            run:
                python ${SRC}/train.py --model ${model} \\
                    --lr ${lr} --out $@

                echo done   # shell
        stage report:
            deps: models/
                  build/clean.csv
            outs: reports/summary.json
                  reports/plots/ (cache=false)
            run: python ${SRC}/report.py
        # end
        """
    ),
    "tabs": "X = 1\nstage a:\n\tdeps: x\n\t\ty\n\touts: z\n\trun:\n\t\techo a\n\t\techo b\n",
    "crlf": "X=1\r\nstage a:\r\n  outs: o\r\n  run:\r\n    echo a\r\n\r\n    echo b\r\n",
    "quotes": (
        'N = "a b" \'c d\'\nstage s:\n    desc: "Don\'t panic"\n    outs: "my file.txt"\n    run: echo ${N} > $@\n'
    ),
    "all fields": src(
        """
        stage t:
            desc: everything
            matrix: m=a b
            deps: in.txt
            outs: out/${m}.txt (cache=false, persist)
            params: train.lr
            mutex: gpu
            jobs: 2
            mem: 512M
            timeout: 90s
            retry: 3
            env: K=v
            dir: sub
            always: no
            run: echo ${m} ${params.train.lr}
        stage p:
            py: pkg.mod:main
            outs: p.txt
        """
    ),
    "comments everywhere": src(
        """
        # a
        X = 1  # b
        # c

        # d
        stage s:  # e
            # f
            deps: a  # g
                  b  # h
            # i
            run:
                echo  # shell
            # j
        # k
        """
    ),
}

CORPUS_WITH_SPEC = {**CORPUS, "spec example": spec_example()}


@pytest.mark.parametrize("name", sorted(CORPUS_WITH_SPEC))
def test_formatting_is_idempotent(name: str) -> None:
    once = fmt(CORPUS_WITH_SPEC[name])
    assert fmt(once) == once


@pytest.mark.parametrize("name", sorted(CORPUS_WITH_SPEC))
def test_formatting_keeps_run_scripts(name: str) -> None:
    text = CORPUS_WITH_SPEC[name]
    assert scripts(parse(fmt(text))) == scripts(parse(text))


@pytest.mark.parametrize("name", sorted(CORPUS_WITH_SPEC))
def test_formatting_keeps_comments(name: str) -> None:
    text = CORPUS_WITH_SPEC[name]
    assert comment_texts(parse(fmt(text))) == comment_texts(parse(text))


@pytest.mark.parametrize("name", sorted(CORPUS_WITH_SPEC))
def test_formatting_keeps_the_statements(name: str) -> None:
    before = parse(CORPUS_WITH_SPEC[name]).statements
    after = parse(fmt(CORPUS_WITH_SPEC[name])).statements
    assert [type(s).__name__ for s in after] == [type(s).__name__ for s in before]


@pytest.mark.parametrize("name", sorted(CORPUS_WITH_SPEC))
def test_formatted_output_is_canonical(name: str) -> None:
    out = fmt(CORPUS_WITH_SPEC[name])
    lines = out.split("\n")
    assert out.endswith("\n") and not out.endswith("\n\n")
    assert "\r" not in out and "\t" not in "".join(line[:4] for line in lines)
    assert all(line == line.rstrip() for line in lines), "trailing whitespace"
    assert "\n\n\n" not in out, "two blank lines in a row"
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        assert indent in (0, 4) or indent >= 8 or line == "", repr(line)


@pytest.mark.parametrize("name", sorted(CORPUS_WITH_SPEC))
def test_formatting_preserves_meaning(name: str, tmp_path: Path) -> None:
    text = CORPUS_WITH_SPEC[name]
    before = _compile(text, tmp_path / "before" / "proj")
    after = _compile(fmt(text), tmp_path / "after" / "proj")
    assert meaning(after) == meaning(before)


def _compile(text: str, root: Path) -> Pipeline:
    root.mkdir(parents=True)
    (root / "params.toml").write_text(PARAMS_TOML)
    return compile_text(text, root)


def test_the_spec_example_compiles_to_the_same_stages_after_fmt(tmp_path: Path) -> None:
    before = _compile(spec_example(), tmp_path / "before" / "proj")
    after = _compile(fmt(spec_example()), tmp_path / "after" / "proj")
    assert [s.name for s in after.stages] == [
        "prepare",
        "train@small-0.1",
        "train@small-0.01",
        "train@large-0.1",
        "train@large-0.01",
        "report",
        "lint",
    ]
    assert meaning(after) == meaning(before)


def test_meaning_preserving_examples_with_continuations(tmp_path: Path) -> None:
    text = src(
        """
        FILES = a.csv
                b.csv
        FLAGS = -O2 \\
        -Wall
        stage s:
            deps: ${FILES} \\
          extra.csv
            outs: out.txt
            run: cc ${FLAGS} $^ -o $@
        """
    )
    before = _compile(text, tmp_path / "before" / "proj")
    after = _compile(fmt(text), tmp_path / "after" / "proj")
    assert meaning(after) == meaning(before)
    (stage,) = after.stages
    assert [d.path for d in stage.deps] == ["a.csv", "b.csv", "extra.csv"]
    assert stage.render_command() == "cc -O2 -Wall a.csv b.csv extra.csv -o out.txt"


def test_an_entry_continued_after_its_key_keeps_its_values(tmp_path: Path) -> None:
    text = "stage s:\n    matrix: m=\\\n        0 1\n    env: A=\\\n      x\n    outs: ${m}\n    run: r >$@\n"
    out = fmt(text)
    assert out == "stage s:\n    matrix: m=\n            0 1\n    env: A=\n         x\n    outs: ${m}\n    run: r >$@\n"
    after = _compile(out, tmp_path / "after" / "proj")
    assert meaning(after) == meaning(_compile(text, tmp_path / "before" / "proj"))
    assert [s.name for s in after.stages] == ["s@0", "s@1"]


# -- the real command ----------------------------------------------------------------------------------

UNFORMATTED = """\
X=1
stage a:
  outs:   a.txt
  run: echo hi > $@
"""

FORMATTED = """\
X = 1

stage a:
    outs: a.txt
    run: echo hi > $@
"""


def test_fmt_check_reports_a_diff_and_changes_nothing(project: Project) -> None:
    path = project.pivotfile(UNFORMATTED)
    before = path.read_bytes()
    result = project.run("fmt", "--check")
    assert result.code == 1, result
    assert "--- Pivotfile" in result.out
    assert "+++ Pivotfile (formatted)" in result.out
    assert "-X=1" in result.out and "+X = 1" in result.out
    assert "+    outs: a.txt" in result.out
    assert "would be reformatted" in result.err
    assert path.read_bytes() == before


def test_fmt_rewrites_then_check_passes(project: Project) -> None:
    path = project.pivotfile(UNFORMATTED)
    result = project.run("fmt")
    assert result.code == 0, result
    assert path.read_text() == FORMATTED
    assert "formatted" in result.err
    check = project.run("fmt", "--check")
    assert check.code == 0, check
    assert check.out == ""
    again = project.run("fmt")
    assert again.code == 0
    assert path.read_text() == FORMATTED


def test_fmt_leaves_a_formatted_file_alone(project: Project) -> None:
    path = project.pivotfile(FORMATTED)
    result = project.run("fmt")
    assert result.code == 0, result
    assert path.read_text() == FORMATTED
    assert "formatted" not in result.err


@pytest.mark.parametrize("check", [False, True])
def test_fmt_on_a_syntax_error_exits_2_and_leaves_the_file(project: Project, check: bool) -> None:
    path = project.pivotfile("X=1\nstage a:\n    deps x\n    run: y\n")
    before = path.read_bytes()
    result = project.run("fmt", *(["--check"] if check else []))
    assert result.code == 2, result
    assert "Pivotfile:3:5: error: missing ':' after 'deps'" in result.err
    assert "        deps x\n        ^" in result.err
    assert path.read_bytes() == before


def test_fmt_reports_every_syntax_error(project: Project) -> None:
    project.pivotfile("stag x:\nstage a:\n    jobs: 1 2\n    run: y\n")
    result = project.run("fmt")
    assert result.code == 2, result
    assert "Pivotfile:1:1: error: unknown statement 'stag'" in result.err
    assert "Pivotfile:3:13: error: 'jobs:' takes a single value" in result.err


def test_fmt_named_file(project: Project) -> None:
    main = project.pivotfile(UNFORMATTED)
    other = project.pivotfile(UNFORMATTED, rel="pipelines/sub/Pivotfile")
    result = project.run("fmt", "pipelines/sub/Pivotfile")
    assert result.code == 0, result
    assert other.read_text() == FORMATTED
    assert main.read_text() == UNFORMATTED


def test_fmt_several_named_files(project: Project) -> None:
    a = project.pivotfile(UNFORMATTED, rel="a/Pivotfile")
    b = project.pivotfile(UNFORMATTED, rel="b/Pivotfile")
    check = project.run("fmt", "--check", "a/Pivotfile", "b/Pivotfile")
    assert check.code == 1
    assert "--- a/Pivotfile" in check.out and "--- b/Pivotfile" in check.out
    result = project.run("fmt", "a/Pivotfile", "b/Pivotfile")
    assert result.code == 0, result
    assert a.read_text() == b.read_text() == FORMATTED


def test_fmt_named_file_with_an_error_names_that_file(project: Project) -> None:
    bad = project.pivotfile("stage a:\n    deps x\n", rel="sub/Pivotfile")
    result = project.run("fmt", "sub/Pivotfile")
    assert result.code == 2, result
    assert "sub/Pivotfile:2:5: error: missing ':' after 'deps'" in result.err
    assert bad.read_text() == "stage a:\n    deps x\n"


def test_fmt_with_file_option(project: Project) -> None:
    other = project.pivotfile(UNFORMATTED, rel="build.pf")
    result = project.run("fmt", "-f", "build.pf")
    assert result.code == 0, result
    assert other.read_text() == FORMATTED


def test_fmt_with_directory_option(project: Project) -> None:
    sub = project.pivotfile(UNFORMATTED, rel="sub/Pivotfile")
    result = project.run("-C", "sub", "fmt")
    assert result.code == 0, result
    assert sub.read_text() == FORMATTED


def test_fmt_keeps_comments_and_scripts_on_disk(project: Project) -> None:
    text = CORPUS["comments everywhere"]
    path = project.pivotfile(text)
    result = project.run("fmt")
    assert result.code == 0, result
    new = path.read_text()
    assert comment_texts(parse(new)) == comment_texts(parse(text))
    assert scripts(parse(new)) == scripts(parse(text))
