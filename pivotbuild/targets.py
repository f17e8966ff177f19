"""The stages command-line targets select, in one place: the names a target
can give a stage, and the closure of what stages need.  The graph
(`BuildGraph.select`, which also takes patterns and output paths) and the
compiled plan's index (`plan.Index.select`, the fast path's selection, which
takes names only) both select through these.

A stage of the current pipeline is named `name` and `DIR:name` (`.:name` at the
root); a stage of another pipeline only `DIR:name`.  A matrix stage's base
names all its variants the same two ways.  (No imports: the no-op fast path
uses this.)
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import TypeVar

    K = TypeVar("K")


def name_table(
    stages: Iterable[tuple[K, str, str, str, bool]], current: str
) -> tuple[dict[str, K], dict[str, list[K]]]:
    """From each stage's (key, pipeline, name, matrix base, has a matrix), in
    declaration order: every name a target can give a stage -> its key, and
    every matrix base -> its variants' keys, in declaration order."""
    names: dict[str, K] = {}
    bases: dict[str, list[K]] = {}
    for key, pipeline, name, base, has_matrix in stages:
        qualified = f"{pipeline or '.'}:"
        for prefix in ("", qualified) if pipeline == current else (qualified,):
            names[prefix + name] = key
            if has_matrix:
                bases.setdefault(prefix + base, []).append(key)
    return names, bases


def named(target: str, names: dict[str, K], bases: dict[str, list[K]]) -> list[K] | None:
    """The stages `target` names as a stage name or a matrix base; None if it
    is neither (a pattern, a path, or unknown)."""
    if target in names:
        return [names[target]]
    if target in bases:
        return bases[target]
    return None


def closure(start: Iterable[K], links: Callable[[K], Iterable[K]]) -> set[K]:
    """`start` and every stage reached from it through `links` (each stage's
    upstream stages, or its downstream ones)."""
    found: set[K] = set()
    stack = list(start)
    while stack:
        key = stack.pop()
        if key not in found:
            found.add(key)
            stack.extend(links(key))
    return found
