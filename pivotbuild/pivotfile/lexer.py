"""The Pivotfile lexer: layout, words and scripts, one statement at a time.

Indentation, continuation lines and verbatim run scripts are easier to get
right line by line than in a grammar, so this lexer decides them and hands the
Lark grammar (`grammar/pivotfile.lark`) a flat list of terminals per
statement.  It never raises: problems become located errors, and the tokens it
still produced let the parser find more.
"""

from __future__ import annotations

import re

from pivotbuild.pivotfile.plainstage import BLANK_SEPARATED_RE, KEY_RE, PLAIN_LINE_RE, PlainStage, plain_stage
from pivotbuild.pivotfile.syntax import (
    FIELDS,
    KEYWORDS,
    Comment,
    FieldKind,
    Pos,
    Script,
    ScriptLine,
    Word,
)
from pivotbuild.structs import field, struct

_ASSIGN_RE = re.compile(r"([^\s=#\"']+)[ \t]*=")
_KEY_EQ_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*=")
_KEY_TYPES = {key: f"{key.upper()}_KEY" for key in FIELDS}  # the grammar's terminal for each field's key
# A word with no quote and no backslash, up to what ends it (in output options, also `,` and `)`).
_PLAIN_WORD = re.compile(r"[^ \t#\"'\\]+")
_PLAIN_OPTION = re.compile(r"[^ \t#\"'\\,)]+")


@struct(slots=True)
class Tok:
    """A terminal for the grammar.  Words and scripts carry their syntax node."""

    type: str
    value: str
    line: int
    col: int
    word: Word | None = None
    script: Script | None = None


@struct(slots=True)
class StatementTokens:
    """The terminals of one top-level statement.  For a stage, `header` holds
    `stage NAME:` and `fields` one list per field, so a stage that does not
    parse as a whole can be parsed field by field.  (A plain stage,
    plainstage.py, comes as a `PlainStage` instead, with no terminals.)"""

    header: list[Tok]
    fields: list[list[Tok]] = field(default_factory=list)
    is_stage: bool = False
    last_line: int = 0

    def all_tokens(self) -> list[Tok]:
        if not self.is_stage or not self.fields:
            return list(self.header)
        line, col = self.fields[0][0].line, self.fields[0][0].col
        end = self.fields[-1][-1]
        toks = [*self.header, Tok("_INDENT", "", line, col)]
        for f in self.fields:
            toks.extend(f)
        toks.append(Tok("_DEDENT", "", end.line, end.col))
        return toks


@struct(slots=True)
class LexResult:
    statements: list[StatementTokens | PlainStage]
    comments: list[Comment]
    errors: list[tuple[Pos, str]]


def lex(text: str) -> LexResult:
    """Split Pivotfile text into per-statement terminals, comments and errors."""
    return _Lexer(text).run()


class _Lexer:
    def __init__(self, text: str) -> None:
        if text.startswith("\ufeff"):
            text = text[1:]
        self.lines = text.split("\n")
        if "\r" in text:
            self.lines = [line.removesuffix("\r") for line in self.lines]
        self.errors: list[tuple[Pos, str]] = []
        for n, line in enumerate(self.lines) if "\x00" in text else ():
            if "\x00" in line:
                self._error(n, line.index("\x00"), "NUL character in a Pivotfile; it must be text")
                self.lines[n] = line.replace("\x00", " ")
        # Each line's layout, worked out once: most lines are looked at more than once.
        self.indent = [line[: len(line) - len(line.lstrip(" \t"))] for line in self.lines]
        self.blank = [not line.strip() for line in self.lines]
        self.comment = [line.startswith("#", len(indent)) for line, indent in zip(self.lines, self.indent, strict=True)]
        self.i = 0
        self.comments: list[Comment] = []
        self.statements: list[StatementTokens | PlainStage] = []

    # -- top level ---------------------------------------------------------

    def run(self) -> LexResult:
        while self.i < len(self.lines):
            if self.blank[self.i]:
                self.i += 1
            elif self.comment[self.i]:
                self._comment_line(self.i)
                self.i += 1
            elif self.indent[self.i]:
                self._error(
                    self.i, len(self.indent[self.i]), "unexpected indentation: statements start in the first column"
                )
                self.i += 1
            else:
                self._statement()
        return LexResult(self.statements, self.comments, self.errors)

    def _statement(self) -> None:
        n = self.i
        line = self.lines[n]
        if line.startswith("stage"):
            plain = plain_stage(self.lines, self.indent, self.blank, self.comment, n)
            if plain is not None:
                stage, comments, self.i = plain
                self.comments += comments
                self.statements.append(stage)
                return
        assign = _ASSIGN_RE.match(line)
        first = line.split(None, 1)[0]
        if assign:
            toks = [Tok("NAME", assign.group(1), n + 1, 1, word=self._word(assign.group(1), n, 0))]
            eq = assign.end() - 1
            toks.append(Tok("EQUALS", "=", n + 1, eq + 1))
            toks += self._words(n, eq + 1, FieldKind.LIST, continues_deeper_than="")
        elif first == "stage" or first.startswith("stage:"):
            self._stage()
            return
        elif first in KEYWORDS:
            toks = [Tok(first.upper(), first, n + 1, 1)]
            toks += self._words(n, len(first), FieldKind.LIST, continues_deeper_than="")
        else:
            toks = self._words(n, 0, FieldKind.LIST, continues_deeper_than="")
        self.statements.append(StatementTokens(toks, last_line=self._last_line(toks)))

    def _stage(self) -> None:
        n = self.i
        header = [Tok("STAGE", "stage", n + 1, 1)]
        rest = self._words(n, len("stage"), FieldKind.LIST, continues_deeper_than=None)
        # `stage NAME:` -- the colon is glued to the name; split it off.
        nl = rest.pop()
        if rest and rest[-1].type == "WORD" and rest[-1].word and not rest[-1].word.quoted:
            last = rest[-1]
            assert last.word is not None
            if last.value == ":":
                rest[-1] = Tok("COLON", ":", last.line, last.col)
            elif last.value.endswith(":"):
                name = last.value[:-1]
                w = Word(name, name, last.word.pos)
                rest[-1] = Tok("WORD", name, last.line, last.col, word=w)
                rest.append(Tok("COLON", ":", last.line, last.col + len(name)))
        header += rest
        header.append(nl)
        stmt = StatementTokens(header, is_stage=True)
        self._block(stmt)
        stmt.last_line = max([self._last_line(header), *(self._last_line(f) for f in stmt.fields)])
        self.statements.append(stmt)

    def _block(self, stmt: StatementTokens) -> None:
        """The indented fields of a stage, up to the next line in column one."""
        field_indent: str | None = None
        while self.i < len(self.lines):
            if self.blank[self.i]:
                self.i += 1
                continue
            indent = self.indent[self.i]
            if self.comment[self.i]:
                self._comment_line(self.i)
                self.i += 1
                continue
            if not indent:
                return
            if field_indent is None:
                if " " in indent and "\t" in indent:
                    self._error(self.i, 0, "indentation mixes tabs and spaces")
                field_indent = indent
            if indent != field_indent:
                self._indent_error(self.i, indent, field_indent)
                self.i += 1
                continue
            stmt.fields.append(self._field(field_indent))

    def _indent_error(self, n: int, indent: str, expected: str) -> None:
        if set(indent) != set(expected) and (" " in indent + expected and "\t" in indent + expected):
            self._error(n, 0, "indentation mixes tabs and spaces; use one or the other in a block")
        elif len(indent) > len(expected):
            self._error(n, len(expected), "unexpected indentation: a deeper line must continue a field's value")
        else:
            width = f"{len(expected)} {'tab' if expected[0] == chr(9) else 'space'}{'s' if len(expected) > 1 else ''}"
            self._error(n, 0, f"inconsistent indentation: fields of this stage are indented by {width}")

    def _field(self, indent: str) -> list[Tok]:
        n = self.i
        line = self.lines[n]
        col = len(indent)
        m = KEY_RE.match(line, col)
        if not m:
            return self._words(n, col, FieldKind.LIST, continues_deeper_than=indent)
        key = m.group(1)
        kind = FIELDS.get(key)
        ttype = _KEY_TYPES.get(key, "UNKNOWN_KEY")
        key_tok = Tok(ttype, key, n + 1, col + 1, word=Word(key, key, Pos(n + 1, col + 1)))
        if kind is FieldKind.SCRIPT:
            return [key_tok, *self._script(n, m.end(), indent)]
        return [key_tok, *self._words(n, m.end(), kind or FieldKind.LIST, continues_deeper_than=indent)]

    # -- run scripts ---------------------------------------------------------

    def _script(self, n: int, start: int, indent: str) -> list[Tok]:
        first_line = self.lines[n]
        rest = first_line[start:]
        lines: list[ScriptLine] = []
        text = rest.strip(" \t")
        if text:
            lines.append(ScriptLine(text, Pos(n + 1, start + len(rest) - len(rest.lstrip(" \t")) + 1)))
        self.i = n + 1
        block: list[int] = []
        while self.i < len(self.lines):
            if self.blank[self.i]:
                block.append(self.i)
                self.i += 1
                continue
            line_indent = self.indent[self.i]
            if len(line_indent) <= len(indent):
                break
            if not line_indent.startswith(indent):
                self._error(self.i, 0, "indentation mixes tabs and spaces; use one or the other in a block")
            block.append(self.i)
            self.i += 1
        while block and self.blank[block[-1]]:
            block.pop()
        nonblank = [self.indent[b] for b in block if not self.blank[b]]
        common = _common_indent(nonblank)
        for b in block:
            body = "" if self.blank[b] else self.lines[b][len(common) :]
            lines.append(ScriptLine(body, Pos(b + 1, len(common) + 1)))
        end_line = (block[-1] + 1) if block else n + 1
        if not lines:
            return [Tok("_NL", "", n + 1, len(first_line) + 1)]
        script = Script(tuple(lines), inline=bool(text))
        head = lines[0]
        return [
            Tok("SCRIPT", script.text, head.pos.line, head.pos.col, script=script),
            Tok("_NL", "", end_line, len(self.lines[end_line - 1]) + 1),
        ]

    # -- words ---------------------------------------------------------------

    def _words(self, n: int, start: int, kind: FieldKind, continues_deeper_than: str | None) -> list[Tok]:
        """Words from line `n`, column `start`, through any continuation lines.

        A value continues after a trailing backslash, and onto following lines
        indented deeper than `continues_deeper_than` (None: no such lines).
        Ends with `_NL`; leaves `self.i` on the first line it did not use.
        """
        toks: list[Tok] = []
        line_no, col = n, start
        while True:
            backslash = self._scan_line(line_no, col, kind, toks)
            nxt = line_no + 1
            if backslash:
                if nxt < len(self.lines):
                    line_no, col = nxt, 0
                    continue
                break
            if continues_deeper_than is None:
                break
            # Look past blank and comment lines for a deeper continuation line.
            j = nxt
            while j < len(self.lines) and (self.blank[j] or self.comment[j]):
                j += 1
            if j < len(self.lines):
                cand = self.indent[j]
                if len(cand) > len(continues_deeper_than):
                    if not cand.startswith(continues_deeper_than):
                        self._error(j, 0, "indentation mixes tabs and spaces; use one or the other in a block")
                    for k in range(nxt, j):
                        if self.comment[k]:
                            self._comment_line(k)
                    line_no, col = j, len(cand)
                    continue
            break
        self.i = line_no + 1
        # The statement ends on its last line with content (not on a comment
        # line reached through a trailing backslash).
        end = toks[-1].line if toks else n + 1
        toks.append(Tok("_NL", "", end, len(self.lines[end - 1]) + 1))
        return toks

    def _scan_line(self, n: int, col: int, kind: FieldKind, toks: list[Tok]) -> bool:
        """Append the words of one physical line; True if it ends with `\\`."""
        s = self.lines[n]
        if kind is not FieldKind.ITEMS and PLAIN_LINE_RE[kind is FieldKind.OUTS].match(s, col):
            # No quote, comment, backslash (nor output options): the words are what spaces separate.
            for found in BLANK_SEPARATED_RE.finditer(s, col):
                word, at = found.group(), found.start() + 1
                toks.append(Tok("WORD", word, n + 1, at, word=Word(word, word, Pos(n + 1, at))))
            return False
        p = col
        while p < len(s):
            c = s[p]
            if c in " \t":
                p += 1
                continue
            if c == "#":
                own = not s[:p].strip()  # e.g. a comment line reached through a `\\` continuation
                self.comments.append(Comment(s[p:].rstrip(), Pos(n + 1, p + 1), own_line=own))
                return False
            if c == "\\" and not s[p + 1 :].strip():
                return True
            if kind is FieldKind.OUTS and c == "(":
                p = self._scan_options(n, p, toks)
                continue
            if kind is FieldKind.ITEMS:
                m = _KEY_EQ_RE.match(s, p)
                if m:
                    toks.append(Tok("KEY_EQ", m.group()[:-1], n + 1, p + 1))
                    p = m.end()
                    # `KEY=\` continues the line: the values follow, not an empty word.
                    if p >= len(s) or s[p] in " \t#" or (s[p] == "\\" and not s[p + 1 :].strip()):
                        continue
            p, backslash = self._scan_word(n, p, "", toks)
            if backslash:
                return True
        return False

    def _scan_options(self, n: int, p: int, toks: list[Tok]) -> int:
        s = self.lines[n]
        toks.append(Tok("LPAR", "(", n + 1, p + 1))
        p += 1
        while p < len(s):
            c = s[p]
            if c in " \t":
                p += 1
            elif c == ")":
                toks.append(Tok("RPAR", ")", n + 1, p + 1))
                return p + 1
            elif c == ",":
                toks.append(Tok("COMMA", ",", n + 1, p + 1))
                p += 1
            elif c == "#" or (c == "\\" and not s[p + 1 :].strip()):
                break  # options close on their own line: a `\\` cannot continue them
            else:
                p, _ = self._scan_word(n, p, ",)", toks)
        self._error(n, p, "missing ')' to close the output's options")
        return len(s)

    def _scan_word(self, n: int, p: int, stops: str, toks: list[Tok]) -> tuple[int, bool]:
        """One word starting at `p`; returns the position after it and whether
        the line ended with a continuation backslash glued to the word."""
        s = self.lines[n]
        plain = (_PLAIN_OPTION if stops else _PLAIN_WORD).match(s, p)
        if plain is not None:
            end = plain.end()
            if end == len(s) or s[end] in " \t#" or s[end] in stops:
                # Nothing to unquote or unescape (most words): the word is the text as written.
                written = s[p:end]
                toks.append(Tok("WORD", written, n + 1, p + 1, word=Word(written, written, Pos(n + 1, p + 1))))
                return end, False
        start = p
        text: list[str] = []
        backslash = False
        while p < len(s):
            c = s[p]
            if c in " \t#" or c in stops:
                break
            if c == "\\" and not s[p + 1 :].strip():
                backslash = True
                break
            if c in "\"'":
                end = self._closing_quote(s, p)
                if end < 0:
                    self._error(n, p, f"unterminated quote {c}: close it on the same line")
                    text.append(s[p + 1 :])
                    p = len(s)
                    break
                body = s[p + 1 : end]
                text.append(_unescape(body) if c == '"' else body)
                p = end + 1
                continue
            text.append(c)
            p += 1
        raw = s[start:p]
        word = Word("".join(text), raw, Pos(n + 1, start + 1))
        toks.append(Tok("WORD", word.text, n + 1, start + 1, word=word))
        return p, backslash

    @staticmethod
    def _closing_quote(s: str, p: int) -> int:
        quote = s[p]
        q = p + 1
        while q < len(s):
            if quote == '"' and s[q] == "\\" and q + 1 < len(s):
                q += 2
                continue
            if s[q] == quote:
                return q
            q += 1
        return -1

    # -- helpers ---------------------------------------------------------------

    def _word(self, text: str, n: int, col: int) -> Word:
        return Word(text, text, Pos(n + 1, col + 1))

    def _comment_line(self, n: int) -> None:
        line = self.lines[n]
        col = len(self.indent[n])
        self.comments.append(Comment(line[col:].rstrip(), Pos(n + 1, col + 1), own_line=True))

    def _error(self, n: int, col: int, message: str) -> None:
        self.errors.append((Pos(n + 1, col + 1), message))

    @staticmethod
    def _last_line(toks: list[Tok]) -> int:
        return max([t.line for t in toks], default=0)


def _common_indent(indents: list[str]) -> str:
    """The longest whitespace prefix shared by every indent (tabs and spaces compared as written)."""
    if not indents:
        return ""
    first = min(indents)
    last = max(indents)
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


def _unescape(body: str) -> str:
    r"""Inside double quotes, `\"` and `\\` stand for `"` and `\`."""
    out: list[str] = []
    i = 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '"\\':
            out.append(body[i + 1])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)
