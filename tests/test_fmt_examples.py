"""`pivotbuild fmt` on the Pivotfiles users see first: the shipped examples,
every Pivotfile shown in the docs, and the spec's complete example.

They must already be in canonical layout, so `pivotbuild fmt --check` passes
on a copied example and a doc example cannot drift from what `fmt` writes.
Then, as a property: any legal edit of their layout (comments added or moved,
spacing before comments changed, blank lines added) formats to a file that
formats to itself, keeps every comment's text, and compiles to the same stages.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, compile_text
from helpers import PARAMS_TOML, REPO, SPEC_EXAMPLE, Draw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pivotbuild import structs
from pivotbuild.errors import Location, PivotError, PivotfileError
from pivotbuild.model import Pipeline
from pivotbuild.pivotfile.fmt import TAB_WIDTH, format_module
from pivotbuild.pivotfile.parser import parse
from pivotbuild.pivotfile.syntax import Module, StageDecl

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLES = sorted((REPO / "examples").rglob("Pivotfile"))
# A doc block marked so shows a layout on purpose (`a#b`, a `\` continuation).
UNFORMATTED = "unformatted"


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file, and the block right after it."""

    doc: Path
    line: int  # of the opening fence
    info: str
    text: str
    next_info: str | None
    next_text: str | None

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text(encoding="utf-8")
    found = [
        (text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
        for m in re.finditer(r"^```([^\n]*)\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)
    ]
    after: list[tuple[str | None, str | None]] = [(info, body) for _, info, body in found[1:]] + [(None, None)]
    return [Block(doc, line, info, body, *nxt) for (line, info, body), nxt in zip(found, after, strict=False)]


def is_pivotfile(block: Block) -> bool:
    """Tagged `pivotfile`, or starting `# Pivotfile`, or an untagged block that
    parses into stages (as README's first example)."""
    if block.info.split()[:1] == ["pivotfile"] or block.text.startswith("# Pivotfile"):
        return True
    if block.info:
        return False
    try:
        module = parse(block.text)
    except PivotfileError:
        return False
    return any(isinstance(s, StageDecl) for s in module.statements)


DOC_PIVOTFILES = [b for doc in DOCS for b in blocks(doc) if is_pivotfile(b)]


def diff(before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), "shown", "formatted"))


# -- the files as shipped ------------------------------------------------------------------------


def test_the_docs_show_pivotfiles() -> None:
    # Finding none would make the tests below pass vacuously.
    docs = {b.doc.name for b in DOC_PIVOTFILES}
    assert {"README.md", "language.md"} <= docs, docs
    assert len(DOC_PIVOTFILES) >= 30
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("block", DOC_PIVOTFILES, ids=lambda b: b.name)
def test_every_pivotfile_in_the_docs_is_formatted(block: Block) -> None:
    try:
        module = parse(block.text)
    except PivotfileError as exc:
        # A syntax error shown on purpose is followed by the error it gives.
        shown = block.next_info == "text" and (block.next_text or "").startswith("Pivotfile:")
        assert shown, f"{block.name}: the example does not parse:\n{exc.render()}"
        return
    formatted = format_module(module)
    if UNFORMATTED in block.info.split():
        assert formatted != block.text, f"{block.name}: formatted already; drop '{UNFORMATTED}' from its fence"
    else:
        assert formatted == block.text, f"{block.name}: run it through 'pivotbuild fmt':\n{diff(block.text, formatted)}"


def test_the_spec_example_is_formatted() -> None:
    text = SPEC_EXAMPLE.read_text(encoding="utf-8")
    assert format_module(parse(text)) == text


def test_fmt_check_passes_on_the_examples_and_the_doc_pivotfiles(project: Project) -> None:
    paths: list[str] = []
    for example in EXAMPLES:
        dest = project.root / example.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(example, dest)
        paths.append(str(dest.relative_to(project.root)))
    for i, block in enumerate(DOC_PIVOTFILES):
        if UNFORMATTED not in block.info.split() and _parses(block.text):
            paths.append(str(project.write(f"docs/{i}/Pivotfile", block.text).relative_to(project.root)))
    result = project.run("fmt", "--check", *paths)
    assert result.code == 0, result.out + result.err
    assert result.out == ""


def _parses(text: str) -> bool:
    try:
        parse(text)
    except PivotfileError:
        return False
    return True


# -- any legal change of their layout ----------------------------------------------------------------


def _fixtures() -> dict[str, tuple[str, str]]:
    """name -> (Pivotfile text, params.toml text), for files that compile."""
    found = {str(p.relative_to(REPO)): (p.read_text(encoding="utf-8"), _params(p.parent)) for p in EXAMPLES}
    found["spec example"] = (SPEC_EXAMPLE.read_text(encoding="utf-8"), PARAMS_TOML)
    readme = next(b for b in DOC_PIVOTFILES if b.doc.name == "README.md")
    found[readme.name] = (readme.text, PARAMS_TOML)
    return found


def _params(directory: Path) -> str:
    path = directory / "params.toml"
    return path.read_text(encoding="utf-8") if path.exists() else ""


FIXTURES = _fixtures()
COMMENTS = ["#", "# note", "#tight", "# with 'quotes' and \"more\"", "# $ {} ( ) = : x", "## two", "# ${X} $@"]
GAPS = [" ", "  ", "   ", "\t", "\t\t", " " * 12, " " * 40]


@dataclasses.dataclass(frozen=True)
class Mutant:
    fixture: str
    text: str


@st.composite
def mutants(draw: Draw[Any]) -> Mutant:
    """A fixture with comments added, gaps before comments changed and blank
    lines added, wherever that cannot change what the file means."""
    name = draw(st.sampled_from(sorted(FIXTURES)))
    text = FIXTURES[name][0]
    module = parse(text)
    # The lines of run: fields (key line included: text after `run:` is script).
    script = {
        n
        for s in module.statements
        if isinstance(s, StageDecl)
        for f in s.fields
        if f.script is not None
        for n in range(f.key.pos.line, f.last_line + 1)
    }
    script_body = {n for n in script if n - 1 in script}
    trailing = {c.pos.line: c for c in module.comments if not c.own_line}
    out: list[str] = []
    lines = text.split("\n")
    for n, line in enumerate(lines, start=1):
        after_backslash = n > 1 and lines[n - 2].rstrip().endswith("\\")
        if line.strip() and n not in script_body and not after_backslash:
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            for _ in range(draw(st.integers(0, 2))):
                kind = draw(st.sampled_from(["comment", "blank"]))
                out.append(indent + draw(st.sampled_from(COMMENTS)) if kind == "comment" else "")
        comment = trailing.get(n)
        if comment is not None:
            code = line[: comment.pos.col - 1].rstrip(" \t")
            out.append(code + draw(st.sampled_from(GAPS)) + line[comment.pos.col - 1 :])
        elif (
            line.strip()
            and n not in script
            and not line.lstrip().startswith("#")
            and not line.rstrip().endswith("\\")
            and draw(st.integers(0, 2)) == 0
        ):
            out.append(line.rstrip() + draw(st.sampled_from(GAPS)) + draw(st.sampled_from(COMMENTS)))
        else:
            out.append(line)
    return Mutant(name, "\n".join(out))


def meaning(text: str, root: Path) -> tuple[object, ...]:
    """The compiled pipeline without locations, or the compile errors' messages."""
    try:
        pipeline: Pipeline = compile_text(text, root)
    except PivotError as exc:
        messages = [d.message for d in exc.diagnostics] if isinstance(exc, PivotfileError) else [exc.message]
        return ("error", *sorted(messages))
    return (
        pipeline.name,
        tuple(structs.replace(s, loc=Location(s.loc.path, 0, 0)) for s in pipeline.stages),
        tuple(t.text for t in pipeline.default),
        tuple(i.path for i in pipeline.includes),
        pipeline.params_files,
    )


def columns(module: Module) -> list[int | None]:
    """Each comment's column as displayed (None for a comment line)."""
    return [
        None if c.own_line else len(module.source_line(c.pos.line)[: c.pos.col - 1].expandtabs(TAB_WIDTH))
        for c in module.comments
    ]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made: dict[str, Path] = {}
    for i, (name, (_, params)) in enumerate(sorted(FIXTURES.items())):
        root = tmp_path_factory.mktemp(f"fixture{i}")
        (root / "params.toml").write_text(params)
        made[name] = root
    return made


@settings(max_examples=150, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutant=mutants())
def test_fmt_of_an_edited_example_is_idempotent_keeps_comments_and_stages(
    mutant: Mutant, roots: dict[str, Path]
) -> None:
    before = parse(mutant.text)
    once = format_module(before)
    after = parse(once)
    assert format_module(after) == once
    assert [c.text for c in after.comments] == [c.text for c in before.comments]
    root = roots[mutant.fixture]
    original = FIXTURES[mutant.fixture][0]
    assert meaning(once, root) == meaning(mutant.text, root) == meaning(original, root)
    # Each end-of-line comment stays at its column, unless that leaves less
    # than two spaces after the code: then it is two spaces after the code.
    for c, was, now in zip(after.comments, columns(before), columns(after), strict=True):
        if was is None or now is None:
            assert was == now, c
            continue
        code = after.source_line(c.pos.line)[: c.pos.col - 1].rstrip(" ")
        assert now == max(was, len(code.expandtabs(TAB_WIDTH)) + 2), (c, was, now)
