"""Variables and `${...}` interpolation: from the words a Pivotfile says to values.

Variables are expanded at the point of use, in the use site's scope (matrix
axes, `${stage}`, params), like make's recursive `=`; a stack catches a
variable that refers to itself.  An error is reported once, where it is, and
unwinds only the field being compiled (`Failed`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pivotbuild import paths
from pivotbuild.errors import Diagnostic, Location
from pivotbuild.model import AutoVar, Command, Param
from pivotbuild.pivotfile.interpolate import Auto, Ref, TemplateError, split, whole_ref
from pivotbuild.pivotfile.params import ParamError, Params, ParamsFileError, to_text
from pivotbuild.pivotfile.syntax import Pos, Script, Word
from pivotbuild.structs import field, struct
from pivotbuild.suggest import did_you_mean

COMMAND_LINE = "<command line>"
RESERVED_VARS = ("stage", "params")
# While a run: script is expanded, `$@ $< $^` met inside variables travel as
# these markers (the lexer refuses NUL in a Pivotfile).
AUTO_MARK = re.compile("\x00([@<^])\x00")


class Failed(Exception):
    """An error was reported; stop compiling the current field."""


@struct(frozen=True, slots=True)
class Origin:
    """Where a word came from, for locating errors: a Pivotfile or the command line."""

    path: str
    source: str  # the source text (a Pivotfile) or the NAME=VALUE argument

    def line(self, n: int) -> str:
        lines = self.source.split("\n")
        return lines[n - 1].rstrip("\r") if 0 < n <= len(lines) else ""


@struct(frozen=True, slots=True)
class VarDef:
    words: tuple[Word, ...]
    origin: Origin
    pos: Pos


@struct(slots=True)
class Scope:
    axes: Mapping[str, str]
    stage: str | None
    params_used: dict[tuple[str, str], Param] = field(default_factory=dict)


class Reporter:
    """Collects the diagnostics of one Pivotfile."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.errors: list[Diagnostic] = []

    def error(self, pos: Pos, message: str, origin: Origin | None = None) -> None:
        o = origin or self.origin
        self.errors.append(Diagnostic(Location(o.path, pos.line, pos.col), message, o.line(pos.line)))

    def fail(self, pos: Pos, message: str, origin: Origin | None = None) -> Failed:
        self.error(pos, message, origin)
        return Failed()


class Expander:
    """Expands words in a scope, reporting problems where they are."""

    def __init__(self, report: Reporter, params: Params, dir_rel: str) -> None:
        self.report = report
        self.params = params
        self.dir_rel = dir_rel
        self.vars: dict[str, VarDef] = {}
        self._expanding: list[str] = []
        self._in_script = False
        # Each run: script that refers to no variable, by its text, as compiled: it means
        # the same in every stage (many stages run the same command on their own `$^`, `$@`).
        self._constant_scripts: dict[str, Command] = {}

    def words(self, words: tuple[Word, ...], scope: Scope) -> list[str]:
        result = self.expand_words(words, scope, self.report.origin)
        if result is None:
            raise Failed
        return result

    def expand_words(self, words: tuple[Word, ...], scope: Scope, origin: Origin) -> list[str] | None:
        out: list[str] = []
        ok = True
        for w in words:
            try:
                out.extend(self.expand(w, scope, origin))
            except Failed:
                ok = False
        return out if ok else None

    def expand_each(self, words: tuple[Word, ...], scope: Scope) -> list[tuple[Word, str]] | None:
        """Each value with the word it came from (a `${LIST}` word gives several)."""
        pairs: list[tuple[Word, str]] = []
        ok = True
        for w in words:
            values = self.expand_word(w, scope)
            if values is None:
                ok = False
            else:
                pairs.extend((w, v) for v in values)
        return pairs if ok else None

    def expand_word(self, word: Word, scope: Scope) -> list[str] | None:
        try:
            return self.expand(word, scope, self.report.origin)
        except Failed:
            return None

    def scalar(self, word: Word, scope: Scope) -> str | None:
        values = self.expand_word(word, scope)
        return None if values is None else " ".join(values)

    def expand(self, word: Word, scope: Scope, origin: Origin) -> list[str]:
        """A word's values: a whole unquoted `${LIST}` gives one value per item;
        anything else gives one value, with lists joined by single spaces."""
        if "$" not in word.text:  # most words: nothing to expand
            return [word.text]

        def at(offset: int) -> Pos:
            # Offsets into the unquoted text match the source only if nothing was unquoted.
            return Pos(word.pos.line, word.pos.col + offset) if word.raw == word.text else word.pos

        try:
            parts = split(word.text)
        except TemplateError as exc:
            raise self.report.fail(at(exc.offset), exc.message, origin) from None
        ref = whole_ref(parts)
        if ref is not None and not word.quoted:
            return self.resolve(ref, at(ref.offset), scope, origin)
        pieces: list[str] = []
        for part in parts:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, Auto):
                if not self._in_script:
                    raise self.report.fail(at(part.offset), f"'${part.var.value}' is only available in 'run:'", origin)
                pieces.append(f"\x00{part.var.value}\x00")
            else:
                pieces.append(" ".join(self.resolve(part, at(part.offset), scope, origin)))
        return ["".join(pieces)]

    def resolve(self, ref: Ref, pos: Pos, scope: Scope, origin: Origin, in_script: bool = False) -> list[str]:
        name = ref.name
        if name in scope.axes:
            return [scope.axes[name]]
        if name == "stage":
            if scope.stage is None:
                raise self.report.fail(pos, "'${stage}' is only available inside a stage", origin)
            return [scope.stage]
        if name.startswith("params."):
            key = name[len("params.") :]
            try:
                value = self.lookup_param(key, scope)
                if isinstance(value, list):
                    return [to_text(v) for v in value]
                return [to_text(value)]
            except ParamError as exc:
                raise self.report.fail(
                    pos, f"param '{key}' {exc}" if "not found" not in str(exc) else str(exc), origin
                ) from None
            except ParamsFileError as exc:
                self.report.errors.append(exc.diagnostic)
                raise Failed from None
        var = self.vars.get(name)
        if var is None:
            raise self.report.fail(pos, self.unknown(name, scope, in_script), origin)
        if name in self._expanding:
            chain = " -> ".join([*self._expanding[self._expanding.index(name) :], name])
            raise self.report.fail(pos, f"variable '{name}' refers to itself: {chain}", origin)
        self._expanding.append(name)
        try:
            values: list[str] = []
            for w in var.words:
                values.extend(self.expand(w, scope, var.origin))
            return values
        finally:
            self._expanding.pop()

    def unknown(self, name: str, scope: Scope, in_script: bool) -> str:
        names = [*self.vars, *scope.axes, *(["stage"] if scope.stage else [])]
        message = f"unknown variable '{name}'{did_you_mean(name, names)}"
        if in_script and (name in os.environ or name.isupper()):
            message += f"; to pass '${{{name}}}' to the shell, write '$${{{name}}}'"
        return message

    def lookup_param(self, ref: str, scope: Scope) -> object:
        pv = self.params.lookup(ref)
        file = paths.join(self.dir_rel, pv.file)
        import json  # (here: most Pivotfiles read no params, and a build imports no json)

        canon = json.dumps(pv.value, sort_keys=True, separators=(",", ":"), default=str)
        scope.params_used[(file, pv.key)] = Param(file, pv.key, canon)
        return pv.value

    def known_script(self, text: str) -> Command | None:
        """The command of a script of this text already compiled, when nothing in it depends on the stage."""
        return self._constant_scripts.get(text)

    def script(self, script: Script, scope: Scope) -> Command:
        source = script.text
        known = self.known_script(source)
        if known is not None:
            return known
        parts: list[str | AutoVar] = []
        failed = False
        constant = True
        for index, line in enumerate(script.lines):
            if index:
                parts.append("\n")
            try:
                pieces = split(line.text)
            except TemplateError as exc:
                self.report.error(Pos(line.pos.line, line.pos.col + exc.offset), exc.message)
                failed = True
                continue
            for piece in pieces:
                if isinstance(piece, str):
                    parts.append(piece)
                elif isinstance(piece, Auto):
                    parts.append(piece.var)
                else:
                    constant = False
                    pos = Pos(line.pos.line, line.pos.col + piece.offset)
                    self._in_script = True
                    try:
                        text = " ".join(self.resolve(piece, pos, scope, self.report.origin, in_script=True))
                    except Failed:
                        failed = True
                        continue
                    finally:
                        self._in_script = False
                    for i, chunk in enumerate(AUTO_MARK.split(text)):
                        parts.append(AutoVar(chunk) if i % 2 else chunk)
        if failed:
            raise Failed
        merged: list[str | AutoVar] = []
        for part in parts:
            if part == "":
                continue
            if isinstance(part, str) and merged and isinstance(merged[-1], str):
                merged[-1] += part
            else:
                merged.append(part)
        command = tuple(merged)
        if constant:
            self._constant_scripts[source] = command
        return command
