"""The scalar fields of a stage: `py:`, `mutex:`, `jobs:`, `retry:`, `mem:`,
`timeout:`, `env:`, `dir:` and `always:`, each checked and converted, with a
located error for a bad value.  A part of the compiler (compiler.py), which
mixes it in; apart only to keep each module to one screenful of ideas."""

from __future__ import annotations

import re
from collections.abc import Callable

from pivotbuild import paths
from pivotbuild.pivotfile.expand import Expander, Failed, Scope
from pivotbuild.pivotfile.syntax import NAME_RE, Field
from pivotbuild.pivotfile.units import parse_duration, parse_size

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import TypeVar

    from pivotbuild.pivotfile.compiler import CompileOptions
    from pivotbuild.pivotfile.syntax import Pos

    _T = TypeVar("_T")

_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
BOOLS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


class ScalarFields:
    """Converters for the one-value (and `env:`) fields; the compiler provides
    the expander, the failure helper, the options and the pipeline directory."""

    x: Expander
    opts: CompileOptions
    dir_rel: str
    _fail: Callable[[Pos, str], Exception]

    def _py(self, f: Field, scope: Scope) -> str:
        word = f.words[0]
        text = self.x.scalar(word, scope)
        if text is None:
            raise Failed
        if not _PY_RE.fullmatch(text):
            raise self._fail(
                word.pos, f"'py: {text}' must name a function as 'module:function' (e.g. 'src.train:main')"
            )
        return text

    def _mutex(self, f: Field, scope: Scope) -> tuple[str, ...]:
        pairs = self.x.expand_each(f.words, scope)
        if pairs is None:
            raise Failed
        for word, g in pairs:
            if g != "*" and not NAME_RE.fullmatch(g):
                raise self._fail(word.pos, f"'{g}' is not a valid mutex group name (or '*' to run alone)")
        return tuple(dict.fromkeys(g for _, g in pairs))

    def _int(self, f: Field, scope: Scope, minimum: int, what: str) -> int:
        word = f.words[0]
        text = self.x.scalar(word, scope)
        if text is None:
            raise Failed
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise self._fail(word.pos, f"'{f.name}: {text}' must be {what}")
        return value

    def _jobs(self, f: Field, scope: Scope) -> int:
        return self._int(f, scope, 1, "a whole number of at least 1")

    def _retry(self, f: Field, scope: Scope) -> int:
        return self._int(f, scope, 0, "a whole number of extra attempts (0 or more)")

    def _mem(self, f: Field, scope: Scope) -> int:
        return self._converted(f, scope, parse_size)

    def _timeout(self, f: Field, scope: Scope) -> float:
        return self._converted(f, scope, parse_duration)

    def _converted(self, f: Field, scope: Scope, convert: Callable[[str], _T]) -> _T:
        word = f.words[0]
        text = self.x.scalar(word, scope)
        if text is None:
            raise Failed
        try:
            return convert(text)
        except ValueError as exc:
            raise self._fail(word.pos, f"{f.name}: {exc}") from None

    def _env(self, f: Field, scope: Scope) -> tuple[tuple[str, str], ...]:
        env: dict[str, str] = {}
        for item in f.items:
            key = item.key.text
            if not _ENV_KEY_RE.fullmatch(key):
                raise self._fail(item.key.pos, f"'{key}' is not a valid environment variable name")
            if key == "PIVOT_STAGE":
                raise self._fail(item.key.pos, "PIVOT_STAGE is set by pivotbuild to the stage's name")
            if key == "PIVOT_LIFELINE":
                raise self._fail(item.key.pos, "PIVOT_LIFELINE is set by pivotbuild (it marks the stage's processes)")
            if key in env:
                raise self._fail(item.key.pos, f"'{key}' is set twice in 'env:'")
            env[key] = " ".join(self.x.words(item.values, scope))
        return tuple(env.items())

    def _dir(self, f: Field, scope: Scope) -> str:
        word = f.words[0]
        text = self.x.scalar(word, scope)
        if text is None:
            raise Failed
        path = paths.make_relative(self.opts.root, paths.join(self.dir_rel, text))
        if paths.escapes(path):
            raise self._fail(word.pos, f"'dir: {text}' is outside the project root; stages run inside the project")
        return path

    def _always(self, f: Field, scope: Scope) -> bool:
        word = f.words[0]
        text = self.x.scalar(word, scope)
        if text is None:
            raise Failed
        if text.lower() not in BOOLS:
            raise self._fail(word.pos, f"'always: {text}' must be yes or no")
        return BOOLS[text.lower()]
