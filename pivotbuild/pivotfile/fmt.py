"""`pivotbuild fmt`: print a syntax tree back in canonical layout.

Canonical means: statements in their order, one blank line around stage
blocks and at most one elsewhere, fields indented by four spaces, values
continued on lines aligned under the first value, single spaces between
words, and an end-of-line comment at the column it was written at, or two
spaces after the code if that column leaves less room.  Comment lines keep
their place, indented like what they sit in.  Words are printed as written
(quotes included) and run scripts keep their text exactly, so formatting never
changes what a Pivotfile means, and formatting a formatted file changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from pivotbuild import structs
from pivotbuild.errors import PivotfileError
from pivotbuild.pivotfile.parser import parse
from pivotbuild.pivotfile.syntax import (
    Assignment,
    Comment,
    DefaultStmt,
    Field,
    IncludeStmt,
    Item,
    Module,
    OutDecl,
    PipelineStmt,
    Pos,
    ScriptLine,
    StageDecl,
    Statement,
    Word,
)

INDENT = "    "
GAP = 2  # the fewest spaces before an end-of-line comment
TAB_WIDTH = 8


class FormatterBug(RuntimeError):
    """The formatted text would read differently from the original (a bug in
    this module); nothing should be written."""


def format_module(module: Module) -> str:
    """The canonical text of a parsed Pivotfile.

    The text is parsed again and compared with `module` (as black compares
    syntax trees), so a layout this module gets wrong raises `FormatterBug`
    instead of dropping a comment or changing a value.
    """
    text = _Formatter(module).run()
    try:
        again = parse(text, module.path)
    except PivotfileError as exc:
        raise FormatterBug(f"formatting {module.path} gives text that does not parse; it was left unchanged") from exc
    if _essence(again) != _essence(module):
        raise FormatterBug(f"formatting {module.path} would change a value or a comment; it was left unchanged")
    return text


def _essence(value: object) -> object:
    """What a syntax tree says, without where it says it: words and comments
    as text, statements and fields in order."""
    if isinstance(value, Word | Comment | ScriptLine):
        return value.text
    if isinstance(value, tuple):
        return tuple(_essence(v) for v in value)
    if isinstance(value, Module):
        return _essence(value.statements), _essence(value.comments)
    if structs.is_struct(value):
        parts = (_essence(getattr(value, f.name)) for f in structs.fields(value) if f.name not in _WHERE)
        return type(value).__name__, *parts
    return value


_WHERE = frozenset({"pos", "last_line"})


class _Formatter:
    def __init__(self, module: Module) -> None:
        self.module = module
        self.trailing: dict[int, Comment] = {c.pos.line: c for c in module.comments if not c.own_line}
        self.own_line: list[Comment] = sorted((c for c in module.comments if c.own_line), key=lambda c: c.pos.line)
        self.out: list[str] = []
        self.lines = module.source.split("\n")  # split once: every aligned comment looks at its line
        self.blank_lines = {i + 1 for i, line in enumerate(self.lines) if not line.strip()}

    def run(self) -> str:
        stmts = self.module.statements
        prev_end = 0
        prev_stage = False
        for index, stmt in enumerate(stmts):
            next_start = stmts[index + 1].pos.line if index + 1 < len(stmts) else None
            leading = self._take_comments(prev_end, stmt.pos.line)
            start = leading[0].pos.line if leading else stmt.pos.line
            if self.out and (prev_stage or isinstance(stmt, StageDecl) or self._blank_between(prev_end, start)):
                self.out.append("")
            for before, comment in zip([None, *leading], leading, strict=False):
                if before is not None and self._blank_between(before.pos.line, comment.pos.line):
                    self.out.append("")
                self.out.append(comment.text)
            self._statement(stmt, next_start)
            prev_end = self._statement_end(stmt, next_start)
            prev_stage = isinstance(stmt, StageDecl)
        rest = self._take_comments(prev_end, None)
        if rest:
            if self.out and (prev_stage or self._blank_between(prev_end, rest[0].pos.line)):
                self.out.append("")
            self.out.extend(c.text for c in rest)
        return "\n".join(self.out) + "\n" if self.out else ""

    # -- comments and blank lines ---------------------------------------------------

    def _take_comments(self, after: int, before: int | None) -> list[Comment]:
        taken = [c for c in self.own_line if c.pos.line > after and (before is None or c.pos.line < before)]
        for c in taken:
            self.own_line.remove(c)
        return taken

    def _blank_between(self, after: int, before: int) -> bool:
        return any(after < n < before for n in self.blank_lines)

    def _statement_end(self, stmt: Statement, next_start: int | None) -> int:
        return stmt.last_line if not isinstance(stmt, StageDecl) else self._block_end(stmt, next_start)

    def _block_end(self, stage: StageDecl, next_start: int | None) -> int:
        # Indented comments after the last field still belong to the stage.
        end = stage.last_line
        for c in self.own_line:
            if c.pos.line > end and c.pos.col > 1 and (next_start is None or c.pos.line < next_start):
                end = c.pos.line
        return end

    def _with_trailing(self, text: str, line: int) -> str:
        comment = self.trailing.pop(line, None)
        return self._aligned(text, comment.text, comment.pos) if comment else text

    def _aligned(self, text: str, comment: str, pos: Pos) -> str:
        """`text`, then `comment` at the column it had in the source if that
        leaves at least two spaces after `text`, else two spaces after it.

        Keeping the column keeps comments aligned in a block as their author
        aligned them; formatting the output again finds every comment at a
        column it may keep, so the rule is idempotent.  Columns count a tab
        as reaching the next multiple of eight, as a terminal shows it.
        """
        column = len(self.lines[pos.line - 1].rstrip("\r")[: pos.col - 1].expandtabs(TAB_WIDTH))
        width = len(text.expandtabs(TAB_WIDTH))
        return text + " " * max(column - width, GAP) + comment

    # -- statements --------------------------------------------------------------------

    def _statement(self, stmt: Statement, next_start: int | None) -> None:
        if isinstance(stmt, PipelineStmt):
            self._words_line("pipeline ", (stmt.name,), stmt.pos.line)
        elif isinstance(stmt, Assignment):
            head = f"{stmt.name.raw} ="
            if stmt.values:
                self._words_line(head + " ", stmt.values, stmt.pos.line)
            else:
                self.out.append(self._with_trailing(head, stmt.pos.line))
        elif isinstance(stmt, DefaultStmt):
            self._words_line("default ", stmt.targets, stmt.pos.line)
        elif isinstance(stmt, IncludeStmt):
            self._words_line("include ", stmt.paths, stmt.pos.line)
        else:
            self._stage(stmt, next_start)

    def _stage(self, stage: StageDecl, next_start: int | None) -> None:
        # A header continued with `\` prints as one line; the comments of its
        # other lines go on their own lines below it.
        header_end = stage.fields[0].key.pos.line if stage.fields else stage.last_line + 1
        comments = [self.trailing.pop(n) for n in sorted(self.trailing) if stage.pos.line <= n < header_end]
        header = f"stage {stage.name.raw}:"
        self.out.append(self._aligned(header, comments[0].text, comments[0].pos) if comments else header)
        self.out.extend(INDENT + c.text for c in comments[1:])
        prev_end = stage.pos.line
        for f in stage.fields:
            for comment in self._take_comments(prev_end, f.key.pos.line):
                self.out.append(INDENT + comment.text)
            self._field(f)
            prev_end = f.last_line
        end = self._block_end(stage, next_start)
        for comment in self._take_comments(prev_end, end + 1):
            self.out.append(INDENT + comment.text)

    def _field(self, f: Field) -> None:
        head = f"{INDENT}{f.key.raw}: "
        if f.script is not None:
            self._script(f, head)
        elif f.outs:
            self._lines(head, [t for o in f.outs for t in _out_tokens(o)], f.key.pos.line)
        elif f.items:
            self._lines(head, [t for i in f.items for t in _item_tokens(i)], f.key.pos.line)
        elif f.words:
            self._lines(head, [(w.pos.line, _raw(w)) for w in f.words], f.key.pos.line)
        else:
            self.out.append(self._with_trailing(head.rstrip(), f.key.pos.line))

    def _script(self, f: Field, head: str) -> None:
        assert f.script is not None
        lines = list(f.script.lines)
        if f.script.inline:
            first = lines.pop(0)
            if first.text.startswith("#"):  # `run:   # ...` reads as an end-of-line comment: align it like one
                self.out.append(self._aligned(head.rstrip(), first.text, first.pos))
            else:
                self.out.append(f"{head}{first.text}")
        else:
            self.out.append(head.rstrip())
        for line in lines:
            self.out.append(f"{INDENT * 2}{line.text}" if line.text else "")

    def _words_line(self, head: str, words: Sequence[Word], line: int) -> None:
        self._lines(head, [(w.pos.line, _raw(w)) for w in words], line)

    def _lines(self, head: str, items: Sequence[tuple[int, str]], head_line: int) -> None:
        """`head` then the items, keeping the source's line breaks between them."""
        pad = " " * len(head)
        first = True
        prev = head_line
        for line, group in groupby(items, key=lambda it: it[0]):
            text = " ".join(t for _, t in group)
            if first and line != head_line:
                self.out.append(self._with_trailing(head.rstrip(), head_line))
                first = False
            # Comment lines between continuation lines stay where they were.
            self.out.extend(pad + c.text for c in self._take_comments(prev, line))
            self.out.append(self._with_trailing((head if first else pad) + text, line))
            first = False
            prev = line


def _raw(word: Word) -> str:
    """The word as written, unless a trailing backslash would read as a continuation."""
    if not word.raw.endswith("\\"):
        return word.raw
    if "'" not in word.text:
        return f"'{word.text}'"
    return '"' + word.text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# A value's pieces as (source line, text): `_lines` keeps them on their lines,
# so a value continued mid-entry keeps its line breaks and its comments.


def _item_tokens(item: Item) -> list[tuple[int, str]]:
    line = item.key.pos.line
    values = list(item.values)
    key = f"{item.key.raw}="
    if values and values[0].pos.line == line:
        key += _raw(values.pop(0))
    return [(line, key), *((v.pos.line, _raw(v)) for v in values)]


def _out_tokens(out: OutDecl) -> list[tuple[int, str]]:
    tokens = [(out.path.pos.line, _raw(out.path))]
    if out.options:
        tokens.append((out.options[0].pos.line, f"({', '.join(_raw(o) for o in out.options)})"))
    return tokens
