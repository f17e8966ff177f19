"""`${...}` interpolation: splitting text into literal parts and references.

The rules (PIVOTFILE.md, Interpolation): `${NAME}` is a reference, `$$` is a
literal `$`, and in `run:` scripts `$@ $< $^` stand for the outs, the first dep
and all deps.  Any other `$` is left alone for the shell.
"""

from __future__ import annotations

from pivotbuild.model import AutoVar
from pivotbuild.structs import struct


@struct(frozen=True, slots=True)
class Ref:
    """`${name}` at character `offset` of the text it came from."""

    name: str
    offset: int


@struct(frozen=True, slots=True)
class Auto:
    var: AutoVar
    offset: int


Part = str | Ref | Auto
_AUTO_VARS = {var.value: var for var in AutoVar}  # `@` -> AutoVar.OUTS, without calling the enum


class TemplateError(Exception):
    """Malformed `${`; `offset` is where in the text it starts."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def split(text: str) -> list[Part]:
    """Split `text` into literal strings, `Ref`s and `Auto`s (literals merged)."""
    if "$" not in text:
        return [text]
    parts: list[Part] = []
    buf: list[str] = []  # the literal text since the last reference
    i = 0
    n = len(text)
    while True:
        dollar = text.find("$", i)
        if dollar < 0 or dollar + 1 >= n:
            buf.append(text[i:])
            break
        buf.append(text[i:dollar])
        nxt = text[dollar + 1]
        if nxt == "$":
            buf.append("$")
            i = dollar + 2
        elif nxt == "{":
            end = text.find("}", dollar + 2)
            if end < 0:
                raise TemplateError("'${' is not closed by '}' (write '$$' for a literal '$')", dollar)
            name = text[dollar + 2 : end].strip()
            if not name:
                raise TemplateError("empty '${}'", dollar)
            _flush(buf, parts)
            parts.append(Ref(name, dollar))
            i = end + 1
        elif nxt in "@<^":
            _flush(buf, parts)
            parts.append(Auto(_AUTO_VARS[nxt], dollar))
            i = dollar + 2
        else:
            buf.append("$")
            i = dollar + 1
    _flush(buf, parts)
    return parts


def _flush(buf: list[str], parts: list[Part]) -> None:
    """Move the literal text gathered in `buf`, if any, to `parts`."""
    literal = "".join(buf)
    if literal:
        parts.append(literal)
    buf.clear()


def whole_ref(parts: list[Part]) -> Ref | None:
    """The reference if the text is exactly one `${NAME}` and nothing else."""
    if len(parts) == 1 and isinstance(parts[0], Ref):
        return parts[0]
    return None
