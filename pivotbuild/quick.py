"""The fast path for plain builds: no click, and for a no-op nothing but `stat`.

Before the command line proper (click, the reporters) is even imported, a
plain build invocation is checked against the compiled plan and the
up-to-date seal.  If the plan is fresh and every stage the targets need is
sealed with unchanged stamps, the build would run nothing, so this prints
what that build would print and exits 0.  If the plan is fresh but some
stage is not sealed, the build runs from here (cli/direct.py) with the plan
and the seal already read and checked, without click.  Anything else (an
option this parser does not know, a target that is a pattern or a path, a
stale plan) returns None and the ordinary command line runs.

This is an optimisation that must never change an answer: it only ever says
"up to date" when the seal proves it (see seal.py), it prints exactly the
summary the ordinary build prints for a no-op, and a build it runs is the
engine's ordinary build with the same options.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

TYPE_CHECKING = False  # not typing's: this path does not import typing
if TYPE_CHECKING:
    from pivotbuild.state.plan import Loaded
    from pivotbuild.state.seal import Seal

# Flags without a value, and the option each sets.
_FLAGS = {
    "-k": "keep_going",
    "--keep-going": "keep_going",
    "--no-cache": "no_cache",
    "--no-wait": "no_wait",
    "-s": "quiet",
    "--quiet": "quiet",
    "-q": "question",
    "--question": "question",
}
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=(.*)", re.S)  # as cli/build.py reads NAME=VALUE
_VALUE_FLAGS = {"-j", "--jobs", "-l", "--load-average", "-C", "--directory", "-f", "--file"}


class _Args:
    """(Not a dataclass: this path does not import dataclasses.)"""

    def __init__(self) -> None:
        self.quiet = False
        self.question = False
        self.keep_going = False
        self.no_cache = False
        self.no_wait = False
        self.jobs: int | None = None
        self.load_average: float | None = None
        self.directories: list[str] = []
        self.file: str | None = None
        self.targets: list[str] = []
        self.overrides: dict[str, str] = {}


def _parse(argv: list[str]) -> _Args | None:
    """The build options of `argv`, or None for anything this path does not handle."""
    from pivotbuild.cli.names import COMMANDS

    args = _Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not eq and arg[:1] == "-" and arg[:2] != "--" and len(arg) > 2 and arg[:2] in _VALUE_FLAGS:
            name, inline, eq = arg[:2], arg[2:], "="
        if name in _VALUE_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    return None
                i += 1
                inline = argv[i]
            if not _value_ok(name, inline, args):
                return None
        elif arg in _FLAGS:
            setattr(args, _FLAGS[arg], True)
        elif arg.startswith("-") or (not args.targets and not args.overrides and arg in COMMANDS):
            return None  # anything else: a subcommand, -n, -B, -v, --json, --help, combined flags...
        elif m := _ASSIGN.fullmatch(arg):
            args.overrides[m.group(1)] = m.group(2)
        else:
            args.targets.append(arg)
        i += 1
    return args


def _value_ok(name: str, value: str, args: _Args) -> bool:
    if name in ("-j", "--jobs"):
        if not (value.isascii() and value.isdigit() and int(value) >= 1):
            return False
        args.jobs = int(value)
        return True
    if name in ("-l", "--load-average"):
        try:
            args.load_average = float(value)
        except ValueError:
            return False
        return args.load_average > 0
    if name in ("-C", "--directory"):
        args.directories.append(value)
        return True
    args.file = value
    return True


def try_fast(argv: list[str]) -> int | None:
    """Exit status of a plain build run on the fast path, having printed what it
    prints; None if the ordinary command line must run."""
    start = time.monotonic()
    args = _parse(argv)
    if args is None:
        return None
    try:
        checked = _check(args)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if checked is None:
        return None
    if not checked.noop:
        from pivotbuild.cli.direct import build

        return build(argv, args, checked)
    if args.question:
        return 0
    skipped = len(checked.closure)
    _print_summary(skipped, time.monotonic() - start)
    _remember(Path(checked.loaded.index.root) / ".pivot", args.targets, skipped, time.monotonic() - start)
    return 0


class Checked:
    """What `_check` found: the plan (fresh), the stages the targets need, the
    seal (None if there is none, or it no longer matches the lockfiles),
    whether it proves every one of them up to date, and if not, which of them
    it proved (`held`: stage indices, as of this check)."""

    def __init__(self, loaded: Loaded, closure: list[int], sealed: Seal | None, noop: bool, *, held: set[int]) -> None:
        self.loaded = loaded
        self.closure = closure
        self.sealed = sealed
        self.noop = noop
        self.held = held


def _check(args: _Args) -> Checked | None:
    """What the fast path needs to know, if the plan is fresh and the targets
    are stage names; else None."""
    from pivotbuild.state import plan, seal

    cwd = Path.cwd()
    for d in args.directories:
        cwd = cwd / d
    if args.file is not None:
        main_file = (cwd / args.file).resolve()
        if main_file.is_dir():
            main_file = main_file / "Pivotfile"
    else:
        main_file = cwd.resolve() / "Pivotfile"
    if not main_file.is_file():
        return None
    loaded = plan.read(main_file, args.overrides)
    if loaded is None or not plan.fresh(loaded, main_file):
        return None
    index = loaded.index
    chosen = _select(index, args.targets or list(index.default))
    if chosen is None:
        return None
    closure = _closure(index, chosen)
    sealed = seal.read(main_file.parent, index.plan_id)
    if sealed is not None and not sealed.state_unchanged():
        sealed = None
    always = any(index.stages[i][4] for i in closure)  # an `always` stage is never up to date
    noop = sealed is not None and not always and sealed.holds(closure)
    # (holds() is the no-op's one pass over every stamp; only a build with work
    # needs to know which stages held, to skip checking their deps exist.)
    held = set() if noop or sealed is None else sealed.holding(closure)
    return Checked(loaded, closure, sealed, noop, held=held)


def _select(index: object, targets: list[str]) -> list[int] | None:
    """Stage indices named by `targets` (all stages if none), or None if a
    target is anything but a stage name or matrix base."""
    from pivotbuild.state.plan import Index

    assert isinstance(index, Index)
    if not targets:
        return list(range(len(index.stages)))
    names: dict[str, int] = {}
    bases: dict[str, list[int]] = {}
    for i, (pipeline, name, base, has_matrix, _) in enumerate(index.stages):
        qualified = f"{pipeline or '.'}:"
        for prefix in ("", qualified) if pipeline == index.current else (qualified,):
            names[prefix + name] = i
            if has_matrix:
                bases.setdefault(prefix + base, []).append(i)
    chosen: list[int] = []
    for target in targets:
        if target in names:
            chosen.append(names[target])
        elif target in bases:
            chosen.extend(bases[target])
        else:
            return None
    return chosen


def _closure(index: object, chosen: list[int]) -> list[int]:
    from pivotbuild.state.plan import Index

    assert isinstance(index, Index)
    found: set[int] = set()
    stack = list(chosen)
    while stack:
        i = stack.pop()
        if i not in found:
            found.add(i)
            stack.extend(index.preds[i])
    return sorted(found)


def _print_summary(skipped: int, duration_s: float) -> None:
    """The summary line the reporters print for a build that ran nothing."""
    line = f"pivotbuild: 0 ran, {skipped} up to date, 0 restored, 0 failed in {duration_s:.1f}s"
    live = sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"
    if live and sys.stderr.isatty() and "NO_COLOR" not in os.environ:
        line = f"\x1b[1m{line}\x1b[0m"  # the live display's bold summary
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _remember(state_dir: Path, targets: list[str], skipped: int, duration_s: float) -> None:
    """The history entry the ordinary build writes for a no-op."""
    from pivotbuild.state import history

    started = history.now_stamp()
    try:
        history.record_build(
            state_dir,
            started=started,
            duration_s=duration_s,
            targets=targets,
            result="ok",
            counts=(0, skipped, 0),
            stages={},
        )
    except OSError:
        sys.stderr.write(f"pivotbuild: warning: could not write the build history in {state_dir}\n")
