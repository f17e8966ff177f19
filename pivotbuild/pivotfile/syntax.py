"""The Pivotfile syntax tree: frozen records that remember where they came from.

The tree says what was written, not what it means: variables are not expanded
and paths are not normalised.  `compiler.py` gives it meaning.
"""

from __future__ import annotations

import re
from enum import Enum

from pivotbuild.structs import struct

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class FieldKind(Enum):
    """How a field's value is lexed and what shape the grammar gives it."""

    LIST = "list"  # words, possibly none
    SCALAR = "scalar"  # exactly one word
    OUTS = "outs"  # paths, each with optional (options)
    SCRIPT = "script"  # verbatim shell text
    ITEMS = "items"  # KEY=VALUES entries (matrix, env)


# Every field a stage may have.  The grammar declares one terminal per field
# (`DEPS_KEY` for `deps`); a test keeps the two lists equal.
FIELDS: dict[str, FieldKind] = {
    "desc": FieldKind.LIST,
    "deps": FieldKind.LIST,
    "outs": FieldKind.OUTS,
    "params": FieldKind.LIST,
    "run": FieldKind.SCRIPT,
    "py": FieldKind.SCALAR,
    "matrix": FieldKind.ITEMS,
    "mutex": FieldKind.LIST,
    "jobs": FieldKind.SCALAR,
    "mem": FieldKind.SCALAR,
    "timeout": FieldKind.SCALAR,
    "retry": FieldKind.SCALAR,
    "env": FieldKind.ITEMS,
    "dir": FieldKind.SCALAR,
    "always": FieldKind.SCALAR,
}

KEYWORDS = ("pipeline", "default", "include", "stage")


@struct(frozen=True, slots=True)
class Pos:
    """1-based line and column in the Pivotfile."""

    line: int
    col: int


@struct(frozen=True, slots=True)
class Word:
    """One word: `text` with quotes removed, `raw` as written."""

    text: str
    raw: str
    pos: Pos

    @property
    def quoted(self) -> bool:
        return self.raw != self.text or self.raw[:1] in {'"', "'"}


@struct(frozen=True, slots=True)
class Comment:
    """A `#` comment outside run scripts; `text` starts with `#`."""

    text: str
    pos: Pos
    own_line: bool  # nothing but whitespace before it on its line


@struct(frozen=True, slots=True)
class ScriptLine:
    """One line of a run script, after the block's common indentation is removed."""

    text: str
    pos: Pos  # where `text` starts in the Pivotfile


@struct(frozen=True, slots=True)
class Script:
    """A run: script.  `inline` when its first line sits on the `run:` line."""

    lines: tuple[ScriptLine, ...]
    inline: bool

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@struct(frozen=True, slots=True)
class OutDecl:
    """An entry of `outs:`: a path and its `(option, ...)` words."""

    path: Word
    options: tuple[Word, ...]


@struct(frozen=True, slots=True)
class Item:
    """`KEY=VALUE ...` in `matrix:` or `env:`."""

    key: Word
    values: tuple[Word, ...]


@struct(frozen=True, slots=True)
class Field:
    """A stage field.  Which of `words`, `outs`, `items`, `script` is filled
    depends on the field's kind; an unknown field keeps its words."""

    key: Word  # the key without its colon
    last_line: int
    words: tuple[Word, ...] = ()
    outs: tuple[OutDecl, ...] = ()
    items: tuple[Item, ...] = ()
    script: Script | None = None

    @property
    def name(self) -> str:
        return self.key.text

    @property
    def known(self) -> bool:
        return self.key.text in FIELDS


@struct(frozen=True, slots=True)
class PipelineStmt:
    pos: Pos
    last_line: int
    name: Word


@struct(frozen=True, slots=True)
class Assignment:
    pos: Pos
    last_line: int
    name: Word
    values: tuple[Word, ...]


@struct(frozen=True, slots=True)
class DefaultStmt:
    pos: Pos
    last_line: int
    targets: tuple[Word, ...]


@struct(frozen=True, slots=True)
class IncludeStmt:
    pos: Pos
    last_line: int
    paths: tuple[Word, ...]


@struct(frozen=True, slots=True)
class StageDecl:
    pos: Pos
    last_line: int
    name: Word
    fields: tuple[Field, ...]


Statement = PipelineStmt | Assignment | DefaultStmt | IncludeStmt | StageDecl


@struct(frozen=True, slots=True)
class Module:
    """A whole parsed Pivotfile."""

    path: str  # as shown in messages
    source: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...]

    def source_line(self, line: int) -> str:
        lines = self.source.split("\n")
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""
