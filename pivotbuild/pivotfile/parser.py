"""Pivotfile text -> syntax tree, with every syntax error located.

The lexer produces terminals one statement at a time; the Lark grammar checks
each statement's shape.  A statement (or stage field) that does not parse
becomes one error and parsing goes on with the next, so a file with several
mistakes reports them all at once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer

from pivotbuild.errors import Diagnostic, Location, PivotfileError
from pivotbuild.pivotfile.lexer import StatementTokens, Tok, lex
from pivotbuild.pivotfile.syntax import (
    FIELDS,
    KEYWORDS,
    Assignment,
    DefaultStmt,
    Field,
    IncludeStmt,
    Item,
    Module,
    OutDecl,
    PipelineStmt,
    Pos,
    StageDecl,
    Statement,
    Word,
)
from pivotbuild.suggest import did_you_mean

GRAMMAR_NAME = "pivotfile.lark"


def grammar_text() -> str:
    """The grammar shipped in the wheel, or the checkout's `grammar/` when running from source."""
    packaged = resources.files("pivotbuild").joinpath("_grammar", GRAMMAR_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[2] / "grammar" / GRAMMAR_NAME
    return checkout.read_text(encoding="utf-8")


class _TokenListLexer(Lexer):
    """Hands Lark the terminals our own lexer already made."""

    def __init__(self, lexer_conf: Any) -> None:
        pass

    def lex(self, data: Sequence[Tok]) -> Iterator[Token]:  # type: ignore[override]
        for index, tok in enumerate(data):
            yield Token(tok.type, tok.value, start_pos=index, line=tok.line, column=tok.col)


@functools.cache
def _lark() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer=_TokenListLexer,
        start=["statement", "stage_header", "field"],
        maybe_placeholders=True,
    )


class _ToSyntax(Transformer[Token, Any]):
    """Lark tree -> syntax records, looking words and scripts up in `toks`."""

    def __init__(self, toks: Sequence[Tok]) -> None:
        super().__init__()
        self.toks = toks

    def _tok(self, token: Token) -> Tok:
        assert token.start_pos is not None
        return self.toks[token.start_pos]

    def _word(self, token: Token) -> Word:
        word = self._tok(token).word
        assert word is not None
        return word

    def _pos(self, token: Token) -> Pos:
        tok = self._tok(token)
        return Pos(tok.line, tok.col)

    def _last_line(self) -> int:
        return max(t.line for t in self.toks)

    def pipeline(self, c: list[Token]) -> PipelineStmt:
        return PipelineStmt(self._pos(c[0]), self._last_line(), self._word(c[1]))

    def assignment(self, c: list[Token]) -> Assignment:
        values = tuple(self._word(t) for t in c[2:])
        return Assignment(self._pos(c[0]), self._last_line(), self._word(c[0]), values)

    def default(self, c: list[Token]) -> DefaultStmt:
        return DefaultStmt(self._pos(c[0]), self._last_line(), tuple(self._word(t) for t in c[1:]))

    def include(self, c: list[Token]) -> IncludeStmt:
        return IncludeStmt(self._pos(c[0]), self._last_line(), tuple(self._word(t) for t in c[1:]))

    def stage_header(self, c: list[Token]) -> tuple[Pos, Word]:
        return self._pos(c[0]), self._word(c[1])

    def stage(self, c: list[Any]) -> StageDecl:
        (pos, name), *fields = (x for x in c if x is not None)
        return StageDecl(pos, self._last_line(), name, tuple(fields))

    def _field_last_line(self, key: Token) -> int:
        # The field ends at its _NL: the first _NL token after the key.
        assert key.start_pos is not None
        for tok in self.toks[key.start_pos :]:
            if tok.type == "_NL":
                return tok.line
        return self._tok(key).line

    def list_field(self, c: list[Token]) -> Field:
        return Field(self._word(c[0]), self._field_last_line(c[0]), words=tuple(self._word(t) for t in c[1:]))

    scalar_field = list_field
    unknown_field = list_field

    def outs_field(self, c: list[Any]) -> Field:
        return Field(self._word(c[0]), self._field_last_line(c[0]), outs=tuple(c[1:]))

    def out(self, c: list[Any]) -> OutDecl:
        return OutDecl(self._word(c[0]), c[1] if c[1] is not None else ())

    def out_options(self, c: list[Token | None]) -> tuple[Word, ...]:
        return tuple(self._word(t) for t in c if t is not None and t.type == "WORD")

    def run_field(self, c: list[Token]) -> Field:
        script = self._tok(c[1]).script
        return Field(self._word(c[0]), self._field_last_line(c[0]), script=script)

    def items_field(self, c: list[Any]) -> Field:
        return Field(self._word(c[0]), self._field_last_line(c[0]), items=tuple(c[1:]))

    def _item(self, c: list[Token | None]) -> Item:
        key = c[0]
        assert key is not None
        tok = self._tok(key)
        values = tuple(self._word(t) for t in c[1:] if t is not None)
        return Item(Word(tok.value, tok.value, Pos(tok.line, tok.col)), values)

    axis = _item
    env_entry = _item


def parse(text: str, path: str = "Pivotfile") -> Module:
    """Parse Pivotfile text.  Raises `PivotfileError` listing every syntax error found."""
    text = text.removeprefix("\ufeff")
    lexed = lex(text)
    lines = text.split("\n")

    def diag(pos: Pos, message: str) -> Diagnostic:
        src = lines[pos.line - 1] if 0 < pos.line <= len(lines) else ""
        return Diagnostic(Location(path, pos.line, pos.col), message, src.rstrip("\r"))

    errors = [diag(pos, msg) for pos, msg in lexed.errors]
    statements: list[Statement] = []
    for stmt in lexed.statements:
        statements.extend(_parse_statement(stmt, lambda p, m: errors.append(diag(p, m))))
    if errors:
        raise PivotfileError(_dedupe(errors))
    return Module(path, text, tuple(statements), tuple(lexed.comments))


def _dedupe(errors: list[Diagnostic]) -> list[Diagnostic]:
    # One error per line is enough; the first found on a line is the cause.
    seen: set[int] = set()
    out: list[Diagnostic] = []
    for d in sorted(errors, key=lambda d: (d.loc.line, d.loc.col)):
        if d.loc.line not in seen:
            seen.add(d.loc.line)
            out.append(d)
    return out


def _parse_statement(stmt: StatementTokens, report: Any) -> list[Statement]:
    toks = stmt.all_tokens()
    try:
        tree = _lark().parse(toks, start="statement")
    except UnexpectedInput as exc:
        if not stmt.is_stage:
            report(*_explain(exc, toks))
            return []
    else:
        result: Statement = _ToSyntax(toks).transform(tree)
        return [result]
    # A stage that does not parse: parse its header and each field alone.
    ok = True
    name: Word | None = None
    pos = Pos(stmt.header[0].line, stmt.header[0].col)
    try:
        tree = _lark().parse(stmt.header, start="stage_header")
        pos, name = _ToSyntax(stmt.header).transform(tree)
    except UnexpectedInput as exc:
        report(*_explain(exc, stmt.header))
        ok = False
    fields: list[Field] = []
    for ftoks in stmt.fields:
        try:
            fields.append(_ToSyntax(ftoks).transform(_lark().parse(ftoks, start="field")))
        except UnexpectedInput as exc:
            report(*_explain(exc, ftoks))
            ok = False
    if ok and name is not None:  # every part parsed alone: keep the stage
        return [StageDecl(pos, stmt.last_line, name, tuple(fields))]
    return []


_TERMINAL_NAMES = {
    "_NL": "the end of the line",
    "WORD": "a word",
    "COLON": "':'",
    "EQUALS": "'='",
    "SCRIPT": "a command",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "KEY_EQ": "KEY=VALUE",
}


def _explain(exc: UnexpectedInput, toks: Sequence[Tok]) -> tuple[Pos, str]:
    """A message a user can act on for a Lark parse error in `toks`."""
    if not isinstance(exc, UnexpectedToken) or exc.token.type == "$END" or exc.token.start_pos is None:
        last = toks[-1]
        return Pos(last.line, last.col), "unexpected end of statement"
    tok = toks[exc.token.start_pos]
    pos = Pos(tok.line, tok.col)
    expected = set(exc.expected)
    first = toks[0]
    field_key = first.value if first.type.endswith("_KEY") else None
    shown = tok.value if tok.type != "_NL" else ""

    if tok.type == "WORD" and {"STAGE", "PIPELINE"} <= expected:
        hint = did_you_mean(tok.value, KEYWORDS)
        return pos, (
            f"unknown statement '{tok.value}'{hint}; expected 'stage NAME:', 'NAME = VALUE', "
            "'pipeline', 'default' or 'include'"
        )
    if any(e.endswith("_KEY") for e in expected) and tok.type in {"WORD", "_NL"}:
        if tok.value in FIELDS:
            return pos, f"missing ':' after '{tok.value}'"
        hint = did_you_mean(tok.value, FIELDS)
        return pos, f"expected a field such as 'deps:' or 'run:', found '{tok.value}'{hint}"
    if first.type == "STAGE":
        if tok.type in {"_NL", "COLON"} and "WORD" in expected:
            return pos, "expected a stage name after 'stage'"
        if "COLON" in expected:
            if tok.type == "WORD":
                return pos, f"expected ':' after the stage name, found '{shown}' (a stage name is one word)"
            return pos, "expected ':' after the stage name"
    if field_key == "run" and tok.type == "_NL":
        return pos, "'run:' is empty: give the command on the same line or in an indented block below it"
    if field_key in {"matrix", "env"} and tok.type in {"WORD", "_NL"}:
        example = "model=small large" if field_key == "matrix" else "OMP_NUM_THREADS=2"
        if tok.type == "_NL":
            return pos, f"'{field_key}:' needs at least one KEY=VALUE entry, e.g. '{field_key}: {example}'"
        return pos, f"'{field_key}:' entries are written KEY=VALUE, e.g. '{field_key}: {example}'; found '{shown}'"
    if field_key is not None and FIELDS.get(field_key) is not None and expected == {"_NL"} and tok.type == "WORD":
        return pos, f"'{field_key}:' takes a single value; found another: '{shown}' (quote a value with spaces)"
    if field_key is not None and tok.type == "_NL" and expected == {"WORD"}:
        return pos, f"'{field_key}:' needs a value"
    if first.type in {"PIPELINE", "DEFAULT", "INCLUDE"}:
        keyword = first.value
        if tok.type == "_NL":
            return pos, f"'{keyword}' needs a value"
        return pos, f"'{keyword}' takes one name; found another: '{shown}'"
    if tok.type in {"RPAR", "COMMA", "LPAR"} or "RPAR" in expected:
        return pos, f"malformed output options near '{shown or tok.type}': write them as 'path (cache=false, persist)'"
    wanted = sorted(_TERMINAL_NAMES.get(e, e.lower()) for e in expected)
    found = f"'{shown}'" if shown else _TERMINAL_NAMES.get(tok.type, tok.type)
    return pos, f"unexpected {found}; expected {' or '.join(wanted)}"
