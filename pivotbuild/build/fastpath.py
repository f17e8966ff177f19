"""The fast path's core: can a plain build be answered from the compiled plan
and the up-to-date seal alone?  For a no-op that is nothing but two reads and
a `stat` per stamp: no Pivotfile parsed, no graph built, no engine.

Given where the build runs, its `-f`, NAME=VALUE overrides and targets,
`check` reads the compiled plan (state/plan.py) and, if it is fresh, selects
the targets over its index (`Index.select`, with the names the graph uses),
reads the seal (state/seal.py) and says whether it proves every stage the
targets need up to date.  The command line's front door (cli/fast.py) parses
the options, prints the no-op's summary and history entry, or runs the build
with what was read here (cli/direct.py); anything this cannot answer (a target
that is a pattern or a path, a stale or missing plan) is None, and the
ordinary build runs.

This is an optimisation that must never change an answer: it only ever says
"up to date" when the seal proves it (see seal.py).  It never prints.
(No typing, no dataclasses, no pathlib: the no-op imports this.)
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from pivotbuild.state.plan import Loaded
    from pivotbuild.state.seal import Seal


class Checked:
    """What `check` found: the plan (fresh), the stages the targets need
    (`closure`, indices into the plan), the seal (None if there is none, or
    it no longer matches the lockfiles), whether it proves every one of them
    up to date (`noop`), and if not, which of them it proved (`held`, as of
    this check)."""

    __slots__ = ("closure", "held", "loaded", "noop", "sealed")

    def __init__(self, loaded: Loaded, closure: list[int], sealed: Seal | None, noop: bool, *, held: set[int]) -> None:
        self.loaded = loaded
        self.closure = closure
        self.sealed = sealed
        self.noop = noop
        self.held = held

    @property
    def state_dir(self) -> str:
        """The project's state directory (where the history goes)."""
        from pivotbuild.paths import STATE_DIR

        return os.path.join(self.loaded.index.root, STATE_DIR)


def check(
    cwd: str | Path,
    file: str | None,
    overrides: Mapping[str, str],
    targets: Sequence[str],
    kept: Callable[[str, str], Seal | None] | None = None,
) -> Checked | None:
    """What the fast path knows of this build, if the plan is fresh and the
    targets are stage names; else None (also when a file cannot be read or
    does not decode: the ordinary build says what is wrong).  `kept(main_dir,
    plan_id)`: a seal kept in memory since the last build (a build server's),
    looked at before the file, which it may be newer than."""
    try:
        return _check(cwd, file, overrides, targets, kept)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _check(
    cwd: str | Path,
    file: str | None,
    overrides: Mapping[str, str],
    targets: Sequence[str],
    kept: Callable[[str, str], Seal | None] | None,
) -> Checked | None:
    from pivotbuild.paths import main_file as pivotfile
    from pivotbuild.state import plan, seal

    main_file = pivotfile(os.fspath(cwd), file or None)
    if not os.path.isfile(main_file):
        return None
    loaded = plan.read(main_file, overrides)
    if loaded is None or not plan.fresh(loaded, main_file):
        return None
    index = loaded.index
    chosen = index.select(list(targets) or list(index.default))
    if chosen is None:
        return None
    closure = index.upstream(chosen)
    main_dir = os.path.dirname(main_file)
    sealed = kept(main_dir, index.plan_id) if kept is not None else None
    if sealed is None or not sealed.state_unchanged():
        sealed = seal.read(main_dir, index.plan_id)
        if sealed is not None and not sealed.state_unchanged():
            sealed = None
    always = index.any_always(closure)  # an `always` stage is never up to date
    # One pass over every sealed stamp: the no-op's whole check, and for a build
    # with work the stages it need not check the deps of.
    held = set() if sealed is None else sealed.holding(closure, fork=True)
    noop = sealed is not None and not always and len(held) == len(closure)
    return Checked(loaded, closure, sealed, noop, held=held)
