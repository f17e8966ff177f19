"""Pivotfile text -> syntax tree, with every syntax error located.

The lexer produces terminals one statement at a time; the grammar checks each
statement's shape (its LALR table, built by Lark: lalr.py), and Lark words the
error of a statement that does not parse.  A statement (or stage field) that does not parse
becomes one error and parsing goes on with the next, so a file with several
mistakes reports them all at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pivotbuild.errors import Diagnostic, Location, PivotfileError
from pivotbuild.pivotfile import lalr
from pivotbuild.pivotfile.lexer import StatementTokens, Tok, lex
from pivotbuild.pivotfile.plainstage import PlainStage
from pivotbuild.pivotfile.syntax import (
    FIELDS,
    KEYWORDS,
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
    StageDecl,
    Statement,
    Word,
)
from pivotbuild.suggest import did_you_mean

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import Any

    from lark import Lark, UnexpectedInput

GRAMMAR_NAME = "pivotfile.lark"


def grammar_text() -> str:
    """The grammar shipped in the wheel, or the checkout's `grammar/` when running from source."""
    # The wheel's copy, found without importing importlib.resources (a few ms) when the package is on disk.
    package = Path(__file__).resolve().parents[1]
    on_disk = package / "_grammar" / GRAMMAR_NAME
    if on_disk.is_file():
        return on_disk.read_text(encoding="utf-8")
    from importlib import resources

    packaged = resources.files("pivotbuild").joinpath("_grammar", GRAMMAR_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = package.parent / "grammar" / GRAMMAR_NAME
    return checkout.read_text(encoding="utf-8")


@functools.cache
def lark_parser() -> Lark:
    """The grammar built by Lark: what the LALR table comes from, and what words a syntax error."""
    from lark import Lark, Token
    from lark.lexer import Lexer

    class TokenListLexer(Lexer):
        """Hands Lark the terminals our own lexer already made."""

        def __init__(self, lexer_conf: Any) -> None:
            pass

        def lex(self, data: Sequence[Tok]) -> Iterator[Token]:  # type: ignore[override]
            for index, tok in enumerate(data):
                yield Token(tok.type, tok.value, start_pos=index, line=tok.line, column=tok.col)

    return Lark(
        grammar_text(),
        parser="lalr",
        lexer=TokenListLexer,
        start=["statement", "stage_header", "field"],
        maybe_placeholders=True,
    )


@functools.cache
def _table() -> lalr.Table:
    """The generated table, unless the grammar changed since it was generated."""
    from pivotbuild.pivotfile.lalr_table import TABLE

    grammar = grammar_text()
    return TABLE if TABLE.checksum == lalr.checksum(grammar) else lalr.from_lark(lark_parser(), grammar)


@functools.lru_cache(maxsize=1024)
def _shape(start: str, types: tuple[str, ...]) -> Any:
    """What the grammar's `start` rule makes of terminals of these types: each
    record as (rule, children), a terminal as its index.  Statements of one
    shape (most stages of a Pivotfile) are parsed once.  Raises lalr.Refused."""
    return lalr.parse(_table(), types, start, lambda rule, children: (rule, children))


class _Refused(Exception):
    """A statement (or stage header, or field) that does not parse, with Lark's account of why."""

    def __init__(self, error: UnexpectedInput) -> None:
        super().__init__(str(error))
        self.error = error


def _syntax(toks: Sequence[Tok], start: str) -> Any:
    """The syntax record the grammar's `start` rule makes of `toks`.  Raises _Refused."""
    try:
        shape = _shape(start, tuple([t.type for t in toks]))
    except lalr.Refused:
        pass
    else:
        return _ToSyntax(toks).make(shape)
    from lark import UnexpectedInput

    try:
        lark_parser().parse(toks, start=start)
    except UnexpectedInput as exc:
        raise _Refused(exc) from None
    raise AssertionError("Lark parsed what its own LALR table refused")


class _ToSyntax:
    """Grammar rules -> syntax records, looking words and scripts up in `toks`
    (a terminal comes as its index there)."""

    def __init__(self, toks: Sequence[Tok]) -> None:
        self.toks = toks

    def make(self, shape: Any) -> Any:
        """The record `shape` (from `_shape`) stands for, with these terminals."""
        rule, children = shape
        return _RULES[rule](self, [c if c is None or c.__class__ is int else self.make(c) for c in children])

    def _word(self, index: int) -> Word:
        word = self.toks[index].word
        assert word is not None
        return word

    def _pos(self, index: int) -> Pos:
        tok = self.toks[index]
        return Pos(tok.line, tok.col)

    def _last_line(self) -> int:
        return max([t.line for t in self.toks])

    def pipeline(self, c: list[int]) -> PipelineStmt:
        return PipelineStmt(self._pos(c[0]), self._last_line(), self._word(c[1]))

    def assignment(self, c: list[int]) -> Assignment:
        values = tuple(self._word(t) for t in c[2:])
        return Assignment(self._pos(c[0]), self._last_line(), self._word(c[0]), values)

    def default(self, c: list[int]) -> DefaultStmt:
        return DefaultStmt(self._pos(c[0]), self._last_line(), tuple(self._word(t) for t in c[1:]))

    def include(self, c: list[int]) -> IncludeStmt:
        return IncludeStmt(self._pos(c[0]), self._last_line(), tuple(self._word(t) for t in c[1:]))

    def stage_header(self, c: list[int]) -> tuple[Pos, Word]:
        return self._pos(c[0]), self._word(c[1])

    def stage(self, c: list[Any]) -> StageDecl:
        (pos, name), *fields = (x for x in c if x is not None)
        return StageDecl(pos, self._last_line(), name, tuple(fields))

    def _field_last_line(self, key: int) -> int:
        # The field ends at its _NL: the first _NL token after the key.
        for tok in self.toks[key:]:
            if tok.type == "_NL":
                return tok.line
        return self.toks[key].line

    def list_field(self, c: list[int]) -> Field:
        return Field(self._word(c[0]), self._field_last_line(c[0]), words=tuple(self._word(t) for t in c[1:]))

    def outs_field(self, c: list[Any]) -> Field:
        return Field(self._word(c[0]), self._field_last_line(c[0]), outs=tuple(c[1:]))

    def out(self, c: list[Any]) -> OutDecl:
        return OutDecl(self._word(c[0]), c[1] if c[1] is not None else ())

    def out_options(self, c: list[int | None]) -> tuple[Word, ...]:
        return tuple(self._word(t) for t in c if t is not None and self.toks[t].type == "WORD")

    def run_field(self, c: list[int]) -> Field:
        script = self.toks[c[1]].script
        return Field(self._word(c[0]), self._field_last_line(c[0]), script=script)

    def items_field(self, c: list[Any]) -> Field:
        return Field(self._word(c[0]), self._field_last_line(c[0]), items=tuple(c[1:]))

    def item(self, c: list[int | None]) -> Item:
        key = c[0]
        assert key is not None
        tok = self.toks[key]
        values = tuple(self._word(t) for t in c[1:] if t is not None)
        return Item(Word(tok.value, tok.value, Pos(tok.line, tok.col)), values)


# Each rule of the grammar that makes a record (the others are inlined or `?rule`s).
_RULES: dict[str, Callable[[_ToSyntax, list[Any]], Any]] = {
    "pipeline": _ToSyntax.pipeline,
    "assignment": _ToSyntax.assignment,
    "default": _ToSyntax.default,
    "include": _ToSyntax.include,
    "stage_header": _ToSyntax.stage_header,
    "stage": _ToSyntax.stage,
    "list_field": _ToSyntax.list_field,
    "scalar_field": _ToSyntax.list_field,
    "unknown_field": _ToSyntax.list_field,
    "outs_field": _ToSyntax.outs_field,
    "out": _ToSyntax.out,
    "out_options": _ToSyntax.out_options,
    "run_field": _ToSyntax.run_field,
    "items_field": _ToSyntax.items_field,
    "axis": _ToSyntax.item,
    "env_entry": _ToSyntax.item,
}


def parse(text: str, path: str = "Pivotfile") -> Module:
    """Parse Pivotfile text.  Raises `PivotfileError` listing every syntax error found."""
    text = text.removeprefix("\ufeff")
    statements, comments = _statements(text, path)
    records: list[Statement] = [s.decl() if isinstance(s, PlainStage) else s for s in statements]
    return Module(path, text, tuple(records), comments)


def parse_lean(text: str, path: str = "Pivotfile") -> tuple[str, list[Statement | PlainStage]]:
    """The text (without a byte-order mark) and its statements, as `parse`
    gives them, except that a plain stage stays a `PlainStage`: what the
    compiler reads (compiler.compile_text), without a syntax record for each
    of its words.  Raises `PivotfileError` as `parse` does."""
    text = text.removeprefix("\ufeff")
    return text, _statements(text, path)[0]


def _statements(text: str, path: str) -> tuple[list[Statement | PlainStage], tuple[Comment, ...]]:
    lexed = lex(text)
    lines = text.split("\n")

    def diag(pos: Pos, message: str) -> Diagnostic:
        src = lines[pos.line - 1] if 0 < pos.line <= len(lines) else ""
        return Diagnostic(Location(path, pos.line, pos.col), message, src.rstrip("\r"))

    errors = [diag(pos, msg) for pos, msg in lexed.errors]
    statements: list[Statement | PlainStage] = []
    for stmt in lexed.statements:
        if type(stmt) is PlainStage:
            statements.append(stmt)
            continue
        assert isinstance(stmt, StatementTokens)
        statements.extend(_parse_statement(stmt, lambda p, m: errors.append(diag(p, m))))
    if errors:
        raise PivotfileError(_dedupe(errors))
    return statements, tuple(lexed.comments)


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
        result: Statement = _syntax(toks, "statement")
    except _Refused as refused:
        if not stmt.is_stage:
            report(*_explain(refused.error, toks))
            return []
    else:
        return [result]
    # A stage that does not parse: parse its header and each field alone.
    ok = True
    name: Word | None = None
    pos = Pos(stmt.header[0].line, stmt.header[0].col)
    try:
        pos, name = _syntax(stmt.header, "stage_header")
    except _Refused as refused:
        report(*_explain(refused.error, stmt.header))
        ok = False
    fields: list[Field] = []
    for ftoks in stmt.fields:
        try:
            fields.append(_syntax(ftoks, "field"))
        except _Refused as refused:
            report(*_explain(refused.error, ftoks))
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
    from lark import UnexpectedToken

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
