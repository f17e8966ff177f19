"""The plain stage: most stages, recognised whole, straight from their lines.

Most stages of a large Pivotfile are written in one form: a `stage NAME:`
header, then one line per field in the same indentation, each a known key and
plain words (no quote, backslash, comment or output options) or a one-line
`run:` command.  The lexer would make terminals of such a stage, the LALR
table would accept them and the parser would build the record from them: four
times the work of reading the stage straight from the lines.  `plain_stage`
does that for a stage in this form and gives up (None) on anything else,
before changing anything, so that the general path sees the stage as if it
had not been tried.

What it gives is a `PlainStage`: the stage's words and where each stands, in
tuples.  `PlainStage.decl` makes the syntax record the general path makes (a
test compares the two on tricky texts); the compiler reads most plain stages
without it (compiler.py, `_plain`), which is most of what a first build spends
on its Pivotfile.
"""

from __future__ import annotations

import re

from pivotbuild.pivotfile.syntax import (
    FIELDS,
    Comment,
    Field,
    FieldKind,
    OutDecl,
    Pos,
    Script,
    ScriptLine,
    StageDecl,
    Word,
)

# A field's key, as the lexer reads it (the grammar's NAME_KEY terminals are the keys of FIELDS).
KEY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)[ \t]*:(?=\s|$)")
# The rest of a line holds plain words only (for `outs:`, no options either).
PLAIN_LINE_RE = (re.compile(r"[^\"'\\#]*$"), re.compile(r"[^\"'\\#(]*$"))
# A plain line's words: what spaces and tabs separate.
BLANK_SEPARATED_RE = re.compile(r"[^ \t]+")
# `stage NAME:` with a name the compiler accepts: what the lexer reads as STAGE WORD COLON.
_HEADER_RE = re.compile(r"stage[ \t]+([A-Za-z_][A-Za-z0-9_.-]*):[ \t]*\Z")

_LIST, _SCALAR, _OUTS, _SCRIPT = FieldKind.LIST, FieldKind.SCALAR, FieldKind.OUTS, FieldKind.SCRIPT

# A field of a plain stage: its key, the line it is on (1-based), the key's
# column, and its words as (text, column) pairs; for `run:`, one pair, the command.
PlainField = tuple[str, int, int, list[tuple[str, int]]]


class PlainStage:
    """A plain stage as read from its lines: its name, the line and column of
    the name, the line its block ends on, and its fields in order.  (A plain
    class: one is made per stage, and tuples inside, not records, is what makes
    reading a plain stage cheap.)"""

    __slots__ = ("fields", "last_line", "line", "name", "name_col")

    def __init__(self, name: str, line: int, name_col: int, last_line: int, fields: list[PlainField]) -> None:
        self.name = name
        self.line = line
        self.name_col = name_col
        self.last_line = last_line
        self.fields = fields

    def decl(self) -> StageDecl:
        """The syntax record the general path makes of this stage."""
        made: list[Field] = []
        for name, line, col, words in self.fields:
            key = Word(name, name, Pos(line, col))
            kind = FIELDS.get(name, _LIST)
            if kind is _SCRIPT:
                text, at = words[0]
                made.append(Field(key, line, (), (), (), Script((ScriptLine(text, Pos(line, at)),), True)))
            elif kind is _OUTS:
                made.append(Field(key, line, (), tuple([OutDecl(Word(w, w, Pos(line, c)), ()) for w, c in words])))
            else:
                made.append(Field(key, line, tuple([Word(w, w, Pos(line, c)) for w, c in words])))
        name_word = Word(self.name, self.name, Pos(self.line, self.name_col))
        return StageDecl(Pos(self.line, 1), self.last_line, name_word, tuple(made))


def plain_stage(
    lines: list[str], indent: list[str], blank: list[bool], comment: list[bool], n: int
) -> tuple[PlainStage, list[Comment], int] | None:
    """The stage whose header is line `n` (0-based; `indent`, `blank` and
    `comment` describe each line as the lexer does), with the comments met in
    its block and the index of the first line after it; None unless the stage
    is plain: every field line in one indentation (spaces or tabs), ending
    where the next line in column one starts; each field a known key (or an
    unknown one) with plain words, as many as the field takes, not continued
    on deeper lines, or `run:` with a command on its line and no block below."""
    header = _HEADER_RE.match(lines[n])
    if header is None:
        return None
    count = len(lines)
    fields: list[PlainField] = []
    comments: list[Comment] = []
    field_indent = ""
    width = 0
    i = n + 1
    while i < count:
        if blank[i]:
            i += 1
            continue
        line = lines[i]
        ind = indent[i]
        if comment[i]:
            col = len(ind)
            comments.append(Comment(line[col:].rstrip(), Pos(i + 1, col + 1), True))
            i += 1
            continue
        if not ind:
            break
        if not field_indent:
            if " " in ind and "\t" in ind:
                return None  # an error of the general path's
            field_indent, width = ind, len(ind)
        elif ind != field_indent:
            return None  # an error, or a deeper line continuing the field above
        key = KEY_RE.match(line, width)
        if key is None:
            return None
        name = key.group(1)
        kind = FIELDS.get(name, _LIST)  # an unknown field keeps its words, for the compiler to name
        start = key.end()
        i += 1
        if kind is _SCRIPT:
            rest = line[start:]
            text = rest.strip(" \t")
            # A deeper line below (past blank ones) makes a block of the script, even a comment.
            j = i
            while j < count and blank[j]:
                j += 1
            if not text or (j < count and len(indent[j]) > width):
                return None
            fields.append((name, i, width + 1, [(text, start + len(rest) - len(rest.lstrip(" \t")) + 1)]))
            continue
        if kind is FieldKind.ITEMS or not PLAIN_LINE_RE[kind is _OUTS].match(line, start):
            return None
        rest = line[start:]
        if rest[:1] == " " and rest[-1:] != " " and "  " not in rest and "\t" not in rest:
            # One space before each word (most lines): the words are what split(" ") gives.
            words = []
            col = start + 2
            for w in rest[1:].split(" "):
                words.append((w, col))
                col += len(w) + 1
        else:
            words = [(m[0], m.start() + 1) for m in BLANK_SEPARATED_RE.finditer(line, start)]
        if kind is _SCALAR and len(words) != 1:
            return None  # a grammar error
        fields.append((name, i, width + 1, words))
    if not fields:
        return None
    return PlainStage(header.group(1), n + 1, header.start(1) + 1, fields[-1][1], fields), comments, i
