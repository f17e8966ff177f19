"""Params files: `params.toml` and `params.json` beside a Pivotfile (YAML when a
YAML package is installed), looked up by dotted keys."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from pivotbuild.errors import Diagnostic, Location
from pivotbuild.state.stamps import Source, read_source
from pivotbuild.structs import struct
from pivotbuild.suggest import did_you_mean

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_FILES = ("params.toml", "params.json")
_SUFFIXES = (".toml", ".json", ".yaml", ".yml")


class ParamError(Exception):
    """A lookup that failed; the compiler locates it at the key in the Pivotfile."""


class ParamsFileError(Exception):
    """A params file that cannot be read or parsed, located in that file."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


@struct(frozen=True, slots=True)
class ParamValue:
    file: str  # the file's name relative to the pipeline directory
    key: str
    value: Any


def split_ref(ref: str) -> tuple[str | None, str]:
    """`FILE:a.b` -> (`FILE`, `a.b`); `a.b` -> (None, `a.b`)."""
    head, sep, tail = ref.partition(":")
    if sep and head.lower().endswith(_SUFFIXES):
        return head, tail
    return None, ref


def to_text(value: Any) -> str:
    """A param value as it appears in a command: strings as they are, lists
    space-separated, everything else in JSON spelling (`true`, `0.1`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        raise ParamError("is a table; name a key inside it")
    if isinstance(value, list):
        return " ".join(to_text(v) for v in value)
    if isinstance(value, (datetime.date, datetime.time)):  # TOML dates and times, as written
        return value.isoformat()
    return json.dumps(value, default=str)


class Params:
    """The params files of one pipeline directory, each read at most once."""

    def __init__(self, pipeline_dir: Path, display_dir: str) -> None:
        self.dir = pipeline_dir
        self.display_dir = display_dir
        self._loaded: dict[str, dict[str, Any] | None] = {}
        self.files_read: set[str] = set()
        self.sources: dict[str, Source] = {}  # each file read or looked for, as it was

    def lookup(self, ref: str) -> ParamValue:
        """The value of `a.b.c` or `FILE:a.b.c`.  Raises ParamError or ParamsFileError."""
        file, key = split_ref(ref)
        if not key or not re.fullmatch(r"[^.\s]+(\.[^.\s]+)*", key):
            raise ParamError(f"'{ref}' is not a param key; write 'section.key' or 'FILE:section.key'")
        candidates = (file,) if file else DEFAULT_FILES
        present: list[tuple[str, dict[str, Any]]] = []
        for name in candidates:
            data = self._load(name)
            if data is None:
                continue
            present.append((name, data))
            found, value = _dig(data, key)
            if found:
                return ParamValue(name, key, value)
        if not present:
            if file:
                raise ParamError(f"params file '{self._shown(file)}' does not exist")
            raise ParamError(f"no params file: create {self._shown('params.toml')} with the key '{key}'")
        keys = [k for _, data in present for k in _flat_keys(data)]
        where = " or ".join(self._shown(name) for name, _ in present)
        raise ParamError(f"param '{key}' not found in {where}{did_you_mean(key, keys)}")

    def _shown(self, name: str) -> str:
        return f"{self.display_dir}/{name}" if self.display_dir not in ("", ".") else name

    def _load(self, name: str) -> dict[str, Any] | None:
        if name in self._loaded:
            return self._loaded[name]
        path = self.dir / name
        self.files_read.add(name)
        try:
            raw, source = read_source(path)
            self.sources[name] = source
            if raw is None:
                self._loaded[name] = None
                return None
            text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text would
        except (OSError, UnicodeDecodeError) as exc:
            raise ParamsFileError(Diagnostic(Location(self._shown(name), 1, 1), f"cannot read: {exc}")) from exc
        data = self._decode(name, text)
        self._loaded[name] = data
        return data

    def _decode(self, name: str, text: str) -> dict[str, Any]:
        shown = self._shown(name)
        lines = text.split("\n")

        def located(line: int, col: int, message: str) -> ParamsFileError:
            src = lines[line - 1] if 0 < line <= len(lines) else ""
            return ParamsFileError(Diagnostic(Location(shown, line, col), message, src))

        lower = name.lower()
        if lower.endswith(".toml"):
            import tomllib  # here: compiling a project with no TOML params file spares its ~20 ms import

            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
                if m:
                    line, col = int(m.group(1)), int(m.group(2))
                else:  # "(at end of document)"
                    line = len(lines) - (1 if len(lines) > 1 and not lines[-1] else 0)
                    col = len(lines[line - 1]) + 1 if lines else 1
                message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
                raise located(line, col, f"invalid TOML: {message or 'syntax error'}") from exc
            except RecursionError:
                raise located(1, 1, "invalid TOML: nested too deeply") from None
        if lower.endswith(".json"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise located(exc.lineno, exc.colno, f"invalid JSON: {exc.msg}") from exc
            except RecursionError:
                raise located(1, 1, "invalid JSON: nested too deeply") from None
        else:
            data = self._decode_yaml(name, text)
        if not isinstance(data, dict):
            raise located(1, 1, "a params file must hold a table (mapping) at the top")
        return data

    def _decode_yaml(self, name: str, text: str) -> Any:
        try:
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            diag = Diagnostic(Location(self._shown(name), 1, 1), "reading YAML params needs PyYAML: pip install pyyaml")
            raise ParamsFileError(diag) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            lines = text.split("\n")
            src = lines[line - 1] if 0 < line <= len(lines) else ""
            diag = Diagnostic(Location(self._shown(name), line, col), f"invalid YAML: {exc}", src)
            raise ParamsFileError(diag) from exc


def _dig(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _flat_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in data.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, f"{full}."))
    return keys
