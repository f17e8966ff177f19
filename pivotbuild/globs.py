"""Dep globs: `*`, `?` and `[...]` within one path component, `**` across any depth.

The graph matches globs against declared outputs; the build expands them
against the files on disk, sorted, so the set itself can be tracked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a dep glob: `*`, `?`, `[...]` within a component; `**` any depth."""
    out: list[str] = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_component_regex(part))
        if not last:
            out.append("/")
    return re.compile("".join(out))


def _component_regex(part: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := part.find("]", i + (3 if part[i + 1 : i + 2] == "!" else 2))) > 0:
            # As in fnmatch, a `]` right after `[` (or `[!`) is part of the class.
            body = part[i + 1 : end]
            negate = body.startswith("!")
            members = body[1:] if negate else body
            for special in "\\[]^":
                members = members.replace(special, "\\" + special)
            # A negated class still stays inside one path component.
            out.append(("[^/" if negate else "[") + members + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def may_match_under(pattern: str, directory: str) -> bool:
    """Could a file somewhere under `directory` match `pattern`?  (The glob's
    components are matched against the directory's, `**` taking any number.)"""
    parts = pattern.split("/")
    dirs = directory.split("/")
    regexes = [None if p == "**" else re.compile(_component_regex(p)) for p in parts]

    def walk(i: int, j: int) -> bool:
        if j == len(dirs):
            return i < len(parts)
        if i == len(parts):
            return False
        rx = regexes[i]
        if rx is None:
            return walk(i + 1, j) or walk(i, j + 1)
        return bool(rx.fullmatch(dirs[j])) and walk(i + 1, j + 1)

    return walk(0, 0)


def glob_static_prefix(pattern: str) -> str:
    """The directories before the first component with a wildcard."""
    static: list[str] = []
    for part in pattern.split("/")[:-1]:
        if any(c in part for c in "*?["):
            break
        static.append(part)
    return "/".join(static)


def expand(root: Path, pattern: str, listed: list[str] | None = None) -> list[str]:
    """Files (and symlinks) under `root` matching the root-relative or absolute
    `pattern`, sorted.  Hidden directories are searched only if the pattern
    names them; `.pivot/` never is.  The directories whose listings the result
    depends on (or the absent base directory) are appended to `listed`."""
    if ".pivot" in pattern.split("/"):
        return []  # pivotbuild's own state is never an input
    regex = glob_regex(pattern)
    static = glob_static_prefix(pattern)
    absolute = os.path.isabs(pattern)
    base = Path(static) if absolute else root / static if static else root
    if not base.is_dir():
        if listed is not None:
            listed.append(str(base))
        return []
    hidden = "/." in "/" + pattern  # as in the shell, wildcards skip dotfiles unless asked
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        if listed is not None:
            listed.append(dirpath)
        rel_dir = os.path.relpath(dirpath, "/" if absolute else root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        if absolute:
            rel_dir = "/" + rel_dir if rel_dir else "/"
        dirnames[:] = sorted(d for d in dirnames if d != ".pivot" and (hidden or not d.startswith(".")))
        for name in filenames:
            if name.startswith(".") and not hidden:
                continue
            rel = f"{rel_dir.rstrip('/')}/{name}" if rel_dir else name
            if regex.fullmatch(rel):
                found.append(rel)
    return sorted(found)
