"""Mutated Pivotfiles (hypothesis): `pivotbuild check` never crashes.

Valid Pivotfiles (the examples, the spec's complete example, the examples of
docs/language.md, and the Pivotfile texts of this test suite) are mutated: lines deleted, duplicated, swapped,
indented, cut short; keywords, `${`, quotes, tabs, unicode, NUL, invalid
UTF-8 and random text inserted. `pivotbuild check`, run in-process through
`pivotbuild.cli.main`, must then exit 0 (with `pivotbuild: ok`) or 2 (with a
`pivotbuild: ` message), never 3 or a traceback. Lines of the seeds are also
spliced into other seeds, so more mutants get past the parser to the compiler.

The suite runs 300 examples from a fixed seed; for a long campaign set the
count (and `PIVOT_FUZZ_SEED` for other examples; `-s` prints the exit statuses):

    PIVOT_FUZZ_EXAMPLES=10000 .venv/bin/pytest -p no:randomly -n 0 -s tests/test_fuzz_pivotfile.py

(docs/reliability.md has the figures of such a run).
"""

from __future__ import annotations

import ast
import collections
import contextlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import REPO, SPEC_EXAMPLE
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

from pivotbuild.cli import main

EXAMPLES = int(os.environ.get("PIVOT_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("PIVOT_FUZZ_SEED", "20261203"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PARAMS = "[train]\nepochs = 3\nlr = 0.1\n"
# A glob that starts at / or climbs out of the project (`/**/*`, `../**`) is
# expanded by `check` as asked: a walk of the whole machine, legitimate but
# unbounded in time and memory, so such mutants are not checked.
OUTSIDE_GLOB = re.compile(rb"(?:^|[\s=:\"'(,])(?:/|\.\.)\S*[*?\[]")

# What the mutations insert: the language's keywords and punctuation, and the
# characters a lexer is most likely to trip on.
TOKENS = [
    "stage ", "stage", "pipeline ", "include ", "default ", "SHELL = ", "X = ", "=", ":", "::",
    "deps:", "outs:", "run:", "py:", "desc:", "params:", "matrix:", "env:", "mutex:", "jobs:",
    "mem:", "timeout:", "retry:", "dir:", "always:", "bogus:", "a=", "x=1 2", "(cache=false)",
    "(", ")", ",", "${", "}", "${x}", "${params.", "${params.train.epochs}", "${model}", "$", "$$",
    "$@", "$<", "$^", "\\", "\\\n", '"', "'", '"a b"', "#", "# c", "@", "*", "**/", "../", "/",
    "\t", "    ", "        ", "\n", "\r", "\r\n", "\x00", "\x0b", "\x0c", "\u00e9", "\u2028",
    "\u200b", "\ufeff", "\U0001f600", "4G", "30m", "-1", "1e999", "yes", "no",
]  # fmt: skip


# The complete example of the language's specification (PIVOTFILE.md, v1), as test_fmt keeps it.


def _fixture_texts() -> list[str]:
    """String constants of the test suite (test files and their helpers) that look like Pivotfiles."""
    found = []
    for path in [*sorted((REPO / "tests").glob("test_*.py")), REPO / "tests" / "helpers.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if re.search(r"^stage \S+:", text, re.M) and "run:" in text:
                    found.append(text.strip("\n") + "\n")
    return sorted(set(found))


def _seeds() -> list[str]:
    seeds = [(REPO / "examples" / name / "Pivotfile").read_text() for name in ("c-project", "data-pipeline")]
    seeds.append(SPEC_EXAMPLE.read_text(encoding="utf-8"))
    language = (REPO / "docs" / "language.md").read_text()
    seeds += re.findall(r"^```pivotfile\n(.*?)^```", language, re.S | re.M)
    return seeds + _fixture_texts()


SEEDS = _seeds()
# Lines of every seed, for splicing one Pivotfile's lines into another.
SEED_LINES = sorted({line for text in SEEDS for line in text.splitlines() if line.strip()})
OUTCOMES: collections.Counter[int] = collections.Counter()  # exit statuses seen, printed with -s


def _lines(text: bytes) -> list[bytes]:
    return text.split(b"\n")


Mutation = Callable[[bytes], bytes]


@st.composite
def mutation(draw: st.DrawFn) -> Mutation:
    """One edit of the text; positions are drawn as fractions, so they fit any length."""
    kind = draw(
        st.sampled_from(
            ["delete", "duplicate", "swap", "indent", "truncate", "insert", "insert", "replace", "bytes", "splice"]
        )
    )
    at = draw(st.floats(0, 1, exclude_max=True))
    at2 = draw(st.floats(0, 1, exclude_max=True))
    token = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6))).encode()
    raw = draw(st.binary(min_size=1, max_size=3))
    indent = draw(st.sampled_from([b" ", b"  ", b"    ", b"\t", b"        "]))
    spliced = draw(st.sampled_from(SEED_LINES)).encode()

    def apply(text: bytes) -> bytes:
        lines = _lines(text)
        i, j = int(at * len(lines)), int(at2 * len(lines))
        pos = int(at * (len(text) + 1))
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "splice":
            lines.insert(i, spliced)
        elif kind == "indent":
            lines[i] = indent + lines[i] if at2 < 0.7 else lines[i].lstrip()
        elif kind == "truncate":
            return text[:pos]
        elif kind == "insert":
            return text[:pos] + token + text[pos:]
        elif kind == "replace":
            return text[:pos] + token + text[pos + 1 :]
        else:
            return text[:pos] + raw + text[pos:]
        return b"\n".join(lines)

    return apply


@contextlib.contextmanager
def project_dir(text: bytes) -> Iterator[Path]:
    """A project holding this Pivotfile (and a params.toml), as the working directory."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="pvfuzz-") as tmp:
        root = Path(tmp)
        (root / ".pivot").mkdir()
        (root / "Pivotfile").write_bytes(text)
        (root / "params.toml").write_text(PARAMS)
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(cwd)


def check(text: bytes) -> tuple[int, str]:
    """`pivotbuild check` in-process on this Pivotfile: (exit status, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with project_dir(text), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["check"])
    return code, err.getvalue()


def assert_checked(text: bytes) -> None:
    code, err = check(text)
    OUTCOMES[code] += 1
    assert code in (0, 2), f"exit {code}\n{err}\n--- Pivotfile:\n{text!r}"
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if line.startswith("pivotbuild: ")]
    if code == 0:
        assert "pivotbuild: ok: " in err, err
    else:
        assert said, f"exit 2 without a 'pivotbuild: ' message:\n{err}\n--- Pivotfile:\n{text!r}"


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes() -> Iterator[None]:
    yield
    print(f"\nPivotfiles checked, by exit status: {dict(sorted(OUTCOMES.items()))}")


@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_every_seed_checks_without_crashing(index: int) -> None:
    """The seeds themselves (some need files the project lacks: exit 2 is fine)."""
    assert_checked(SEEDS[index].encode())


def test_the_seeds_include_the_examples_the_spec_the_docs_and_the_fixtures() -> None:
    assert len(SEEDS) > 20
    assert any("pipeline c-project" in s for s in SEEDS)
    assert any("pipeline demo" in s and "mutex: gpu" in s for s in SEEDS)
    assert sum("SRC = src" in s for s in SEEDS) >= 2  # the spec's and language.md's first example


@FUZZ_SETTINGS
@seed(SEED)
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation(), min_size=1, max_size=6))
def test_a_mutated_pivotfile_is_checked_without_crashing(seed: str, mutations: list[Mutation]) -> None:
    text = seed.encode()
    for mutate in mutations:
        text = mutate(text)
    assume(not OUTSIDE_GLOB.search(text))
    assert_checked(text)
