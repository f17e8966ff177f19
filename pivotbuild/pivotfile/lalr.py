"""The Pivotfile grammar's LALR(1) table, run without Lark.

Lark builds the table from `grammar/pivotfile.lark`, the parser of record;
`python -m pivotbuild.pivotfile.lalr` writes it to `lalr_table.py` with the
grammar's checksum (a test keeps the two in step, and parser.py asks Lark
again if the grammar was edited since).  Running the table over a statement's
terminals is what Lark's LALR parser does, shaping each reduction's children
as Lark's tree builder would, so the callbacks see what a Lark Transformer
saw; importing and building Lark cost more than parsing a thousand stages
this way.  A statement the table refuses goes to Lark for its error.
"""

from __future__ import annotations

import zlib
from collections import namedtuple
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from lark import Lark

END = "$END"  # the terminal Lark feeds after the last token

# A rule's children, as Lark's tree builder keeps them: each (index in the
# rule's expansion, whether it is an inlined `_rule` to splice, how many None
# placeholders go before it), and the placeholders after the last.
Keep = tuple[tuple[tuple[int, bool, int], ...], int]


if TYPE_CHECKING:

    class Rule(NamedTuple):
        origin: str  # the nonterminal it reduces to
        callback: str  # the name a Transformer method has; "" for an inlined `_rule` (its children are spliced)
        size: int  # symbols in its expansion
        expand1: bool  # a `?rule`: a single child stands for the node
        keep: Keep | None  # None: every child, as is

    class Table(NamedTuple):
        checksum: str  # of the grammar text it was built from
        start: dict[str, int]  # start symbol -> first state
        end: dict[str, int]  # start symbol -> the state that accepts it
        # state -> terminal or nonterminal -> action: >= 0 shift (or go) to that
        # state; < 0 reduce by rule ~action
        states: tuple[dict[str, int], ...]
        rules: tuple[Rule, ...]

else:  # (typing's NamedTuple makes the same: a build does not import typing, 2 to 3 ms)
    Rule = namedtuple("Rule", ("origin", "callback", "size", "expand1", "keep"))
    Table = namedtuple("Table", ("checksum", "start", "end", "states", "rules"))


def checksum(grammar: str) -> str:
    return f"{zlib.crc32(grammar.encode('utf-8')):08x}"


class Refused(Exception):
    """The table has no action for a terminal: the statement does not parse."""


def parse(table: Table, types: Sequence[str], start: str, build: Callable[[str, list[Any]], Any]) -> Any:
    """Parse terminals of these `types` from `start`; a terminal's value is its
    index in `types`, a rule's what `build(callback, children)` returns.
    Raises Refused."""
    states, rules = table.states, table.rules
    end = table.end[start]
    stack = [table.start[start]]
    values: list[Any] = []
    for i, t in enumerate([*types, END]):
        while True:
            action = states[stack[-1]].get(t)
            if action is None:
                raise Refused
            if action >= 0:
                stack.append(action)
                values.append(i)
                break
            rule = rules[~action]
            if rule.size:
                children = values[-rule.size :]
                del values[-rule.size :]
                del stack[-rule.size :]
            else:
                children = []
            if rule.keep is not None:
                children = _kept(children, rule.keep)
            if not rule.callback:
                value: Any = children
            elif rule.expand1 and len(children) == 1:
                value = children[0]
            else:
                value = build(rule.callback, children)
            stack.append(states[stack[-1]][rule.origin])
            values.append(value)
            if t == END and stack[-1] == end:
                return value
    raise AssertionError("the table shifted the end of input")  # Lark's tables never do


def _kept(children: list[Any], keep: Keep) -> list[Any]:
    include, trailing = keep
    kept: list[Any] = []
    for i, splice, nones in include:
        if nones:
            kept += [None] * nones
        if splice:
            kept += children[i]
        else:
            kept.append(children[i])
    if trailing:
        kept += [None] * trailing
    return kept


# -- building the table with Lark ------------------------------------------------------


def from_lark(lark: Lark, grammar: str) -> Table:
    """The table of an LALR `Lark` (built with maybe_placeholders) for `grammar`."""
    from lark.parsers.lalr_analysis import Shift

    parse_table = lark.parser.parser.parser.parse_table
    # Lark numbers states as its sets happen to iterate: number them again, in
    # the order a walk from the start states in name order meets them, so
    # that the same grammar always gives the same table.
    number: dict[int, int] = {}
    walk = [parse_table.start_states[start] for start in sorted(parse_table.start_states)]
    for state in walk:
        if state not in number:
            number[state] = len(number)
            for _, (action, arg) in sorted(parse_table.states[state].items()):
                if action is Shift:
                    walk.append(arg)
    rules: dict[Any, int] = {}  # each rule reduced by, numbered as first met
    states: list[dict[str, int]] = []
    for state in number:
        row = {}
        for t, (action, arg) in sorted(parse_table.states[state].items()):
            row[str(t)] = number[arg] if action is Shift else ~rules.setdefault(arg, len(rules))
        states.append(row)
    return Table(
        checksum(grammar),
        {start: number[state] for start, state in sorted(parse_table.start_states.items())},
        {start: number[state] for start, state in sorted(parse_table.end_states.items())},
        tuple(states),
        tuple(_rule(rule) for rule in rules),
    )


def _rule(rule: Any) -> Rule:
    """What Lark's ParseTreeBuilder does with a reduction by `rule` (no ambiguity, no keep_all_tokens)."""
    options = rule.options
    assert not options.keep_all_tokens and not options.template_source, "not used by the grammar"
    origin = str(rule.origin.name)  # Lark's names are its Tokens
    inlined = origin.startswith("_")
    assert not (inlined and options.expand1)
    expansion = rule.expansion
    empty = options.empty_indices
    nones_at = [len(ones) for ones in "".join(str(int(b)) for b in empty).split("0")] if empty else []
    include: list[tuple[int, bool, int]] = []
    nones = 0
    for i, sym in enumerate(expansion):
        nones += nones_at[i] if nones_at else 0
        if not (sym.is_term and sym.filter_out):
            include.append((i, not sym.is_term and sym.name.startswith("_"), nones))
            nones = 0
    trailing = nones + (nones_at[len(expansion)] if nones_at else 0)
    plain = not empty and len(include) == len(expansion) and not any(splice for _, splice, _ in include)
    return Rule(
        origin,
        "" if inlined else str(rule.alias or origin),
        len(expansion),
        bool(options.expand1) and not rule.alias,
        None if plain else (tuple(include), trailing),
    )


def source(table: Table) -> str:
    """`table` as the text of lalr_table.py."""
    lines = [
        '"""The LALR(1) table of grammar/pivotfile.lark, built by Lark.  Generated by',
        "`python -m pivotbuild.pivotfile.lalr`: do not edit; run it again after editing the grammar.",
        '"""',
        "",
        "# ruff: noqa: E501",
        "# fmt: off",
        "",
        "from pivotbuild.pivotfile.lalr import Rule, Table",
        "",
        "TABLE = Table(",
        f"    checksum={table.checksum!r},",
        f"    start={table.start!r},",
        f"    end={table.end!r},",
        "    states=(",
        *(f"        {state!r}," for state in table.states),
        "    ),",
        "    rules=(",
        *(f"        {rule!r}," for rule in table.rules),
        "    ),",
        ")",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    from pathlib import Path

    from pivotbuild.pivotfile.parser import grammar_text, lark_parser

    target = Path(__file__).with_name("lalr_table.py")
    target.write_text(source(from_lark(lark_parser(), grammar_text())), encoding="utf-8")


if __name__ == "__main__":
    main()
