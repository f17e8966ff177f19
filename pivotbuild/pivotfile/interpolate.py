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
    buf: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            buf.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            buf.append("$")
            i += 2
        elif nxt == "{":
            end = text.find("}", i + 2)
            if end < 0:
                raise TemplateError("'${' is not closed by '}' (write '$$' for a literal '$')", i)
            name = text[i + 2 : end].strip()
            if not name:
                raise TemplateError("empty '${}'", i)
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(Ref(name, i))
            i = end + 1
        elif nxt in "@<^":
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(Auto(AutoVar(nxt), i))
            i += 2
        else:
            buf.append(c)
            i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def whole_ref(parts: list[Part]) -> Ref | None:
    """The reference if the text is exactly one `${NAME}` and nothing else."""
    if len(parts) == 1 and isinstance(parts[0], Ref):
        return parts[0]
    return None
