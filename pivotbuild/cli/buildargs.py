"""The build command's options, declared once, and the one way they become
`BuildOptions`.

Each option is declared here: its flags, whether it takes a value and what
value, its help.  The click command (`repro`, what a bare `pivotbuild` runs)
gets its options from these declarations (cli/common.py `click_option`), and
so does the fast path's parser (`parse`), which runs before click is even
imported.  Both end in `to_options`, with the same checks (`conflict`).

The fast parser answers only what it can answer exactly as click would: the
options marked `fast`, values it is sure click accepts the same way, targets
and NAME=VALUE.  For anything else (--help, a subcommand, an option it does
not take, a value click may read otherwise or refuse, combined short flags)
it returns None, and click parses the command line, with its usual messages.

(No click, no typing, no dataclasses here: the no-op fast path imports this.)
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from pivotbuild.build.options import BuildOptions

# What an option's value is (FLAG: it takes none).
FLAG, JOBS, LOAD, TEXT, MS, SIZE = "flag", "jobs", "load", "text", "ms", "size"


class Option:
    """One option: `dest` is its `BuildOptions` field (or what click calls it),
    `fast` says the fast path takes it (see the module's docstring)."""

    __slots__ = ("dest", "fast", "flags", "help", "kind", "metavar")

    def __init__(
        self,
        dest: str,
        flags: tuple[str, ...],
        help: str,
        *,
        kind: str = FLAG,
        metavar: str | None = None,
        fast: bool = False,
    ) -> None:
        self.dest = dest
        self.flags = flags
        self.help = help
        self.kind = kind
        self.metavar = metavar
        self.fast = fast


# `--all`, with one meaning for every command that works on pipelines.
ALL = Option(
    "all_pipelines",
    ("--all",),
    "Every pipeline: every Pivotfile under the project root, not only this one and what it includes.",
)

# `-f` and `-C`, which every command takes, before its name and after it.
FILE = Option("file", ("-f", "--file"), "The Pivotfile (default: ./Pivotfile).", kind=TEXT, metavar="PATH", fast=True)
DIRECTORY = Option(
    "directories",
    ("-C", "--directory"),
    "Change to DIR first (each -C relative to the one before, as in make).",
    kind=TEXT,
    metavar="DIR",
    fast=True,
)

# The build's own options, in the order `--help` lists them.  Those the fast
# path does not take change what a build that runs nothing prints or does.
BUILD_OPTIONS = (
    Option(
        "jobs",
        ("-j", "--jobs"),
        "Run at most N jobs at once (default: the number of CPUs).",
        kind=JOBS,
        metavar="N",
        fast=True,
    ),
    Option(
        "load_average",
        ("-l", "--load-average"),
        "Start no new job while the load average is at least X.",
        kind=LOAD,
        metavar="X",
        fast=True,
    ),
    Option(
        "mem_limit",
        ("--mem-limit",),
        "Let the stages running at once reserve at most SIZE of memory in all (their mem:; e.g. 8G).",
        kind=SIZE,
        metavar="SIZE",
    ),
    Option(
        "keep_going", ("-k", "--keep-going"), "After a failure, keep building what does not depend on it.", fast=True
    ),
    Option("dry_run", ("-n", "--dry-run"), "Print what would run and why; run nothing."),
    Option("question", ("-q", "--question"), "Run nothing; exit 0 if up to date, 1 if not.", fast=True),
    Option(
        "always_make", ("-B", "--always-make"), "Rerun the selected stages and all they depend on, even if up to date."
    ),
    Option("watch", ("-w", "--watch"), "Build, then rebuild whenever an input changes, until Ctrl-C."),
    Option("serve", ("--serve",), "With -w: also answer JSON-RPC on .pivot/agent.sock ('pivotbuild rpc')."),
    Option("restart", ("--restart",), "With -w: a change kills the running stages whose inputs it changed."),
    Option(
        "debounce",
        ("--debounce",),
        "With -w: wait until no file changed for MS milliseconds before building (default 50).",
        kind=MS,
        metavar="MS",
    ),
    ALL,
    Option("explain", ("--explain",), "Print for each stage why it runs or is skipped."),
    Option("json", ("--json",), "Machine output: one JSON event per line on stdout."),
    Option("quiet", ("-s", "--quiet"), "Less output.", fast=True),
    Option("verbose", ("-v", "--verbose"), "More output."),
    Option("no_cache", ("--no-cache",), "Do not store outputs in the cache.", fast=True),
    Option("no_commit", ("--no-commit",), "Run, but record results as pending ('pivotbuild commit')."),
    Option(
        "no_checkout",
        ("--no-checkout",),
        "With --executor dask: record results and fill the remote, but leave the outputs there ('pivotbuild pull').",
    ),
    Option("no_wait", ("--no-wait",), "If another build holds the project, exit 1 instead of waiting.", fast=True),
    Option(
        "executor",
        ("--executor",),
        "Where stages run: local, or dask://HOST:PORT (a Dask cluster; default: .pivot/config.toml's [executor]).",
        kind=TEXT,
        metavar="URL",
    ),
)

# Options that cannot be given together.
_EXCLUSIVE = (
    ("dry_run", "question"),
    ("quiet", "verbose"),
    ("watch", "dry_run"),
    ("watch", "question"),
    ("watch", "no_checkout"),
)
# Options that mean something only beside another.
_NEEDS = (("serve", "watch"), ("restart", "watch"), ("debounce", "watch"))

_BY_FLAG = {flag: option for option in (*BUILD_OPTIONS, FILE, DIRECTORY) for flag in option.flags}
_BY_DEST = {option.dest: option for option in BUILD_OPTIONS}
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class BuildArgs:
    """A build's command line, parsed: each build option's value by `dest`
    (False or None when not given, as click leaves them), the targets and
    NAME=VALUE overrides, the `-f` value and the `-C` values."""

    __slots__ = ("directories", "file", "overrides", "targets", "values")

    def __init__(
        self,
        words: Sequence[str] = (),
        values: Mapping[str, object] | None = None,
        *,
        file: str | None = None,
        directories: Sequence[str] = (),
    ) -> None:
        self.targets, self.overrides = split_args(words)
        self.values: dict[str, Any] = {o.dest: False if o.kind == FLAG else None for o in BUILD_OPTIONS}
        if values is not None:
            self.values.update((k, v) for k, v in values.items() if k in self.values)
        self.file = file
        self.directories = list(directories)


def split_args(words: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Targets and `NAME=VALUE` overrides, as make reads its command line."""
    targets: list[str] = []
    overrides: dict[str, str] = {}
    for word in words:
        # NAME=VALUE with NAME as [A-Za-z_][A-Za-z0-9_.-]* (spelled out: `re`
        # costs the no-op more than its whole check of a small project).
        name, eq, value = word.partition("=")
        if eq and name and not name[0].isdigit() and name[0] not in ".-" and _NAME_CHARS.issuperset(name):
            overrides[name] = value
        else:
            targets.append(word)
    return tuple(targets), overrides


def conflict(values: Mapping[str, object]) -> str | None:
    """Why these option values cannot be used together, if they cannot."""
    for a, b in _EXCLUSIVE:
        if values.get(a) and values.get(b):
            return f"{_BY_DEST[a].flags[0]} and {_BY_DEST[b].flags[0]} cannot be used together"
    for option, needed in _NEEDS:
        given = values.get(option)
        if given is not None and given is not False and not values.get(needed):
            return f"{_BY_DEST[option].flags[0]} needs {_BY_DEST[needed].flags[0]}"
    return None


def to_options(args: BuildArgs, cwd: Path) -> BuildOptions:
    """The options of the build `args` asks for, run in `cwd` (where its `-C`
    options led); `args` has passed `conflict`."""
    from pathlib import Path

    from pivotbuild.build.options import BuildOptions

    values = dict(args.values)
    if make_says_dry_run() and not (values["question"] or values["watch"]):
        values["dry_run"] = True  # run by `make -n`: print what would run, run nothing (as make's own -n)
    return BuildOptions(
        cwd=cwd,
        file=Path(args.file) if args.file else None,
        targets=tuple(args.targets),
        overrides=dict(args.overrides),
        **values,
    )


def enter(directories: Sequence[str]) -> None:
    """Change to each `-C` directory in turn, each relative to the one before,
    as make does (`-C a -C b` is `-C a/b`).  Raises OSError, whose `filename`
    is the directory that could not be entered."""
    for directory in directories:
        os.chdir(directory)


# -- the fast parser ---------------------------------------------------------------------


def make_says_dry_run() -> bool:
    """Is pivotbuild run by `make -n` (a `+` recipe: `n` among MAKEFLAGS'
    single-letter flags, its first word)?  Then a build is a dry run."""
    flags = os.environ.get("MAKEFLAGS", "")
    first = flags.split(maxsplit=1)[0] if flags.strip() else ""
    return bool(first) and not first.startswith("-") and "=" not in first and "n" in first


def parse(argv: Sequence[str]) -> BuildArgs | None:
    """The build `argv` asks for, or None for anything to leave to click."""
    from pivotbuild.cli.names import COMMANDS

    if make_says_dry_run():
        return None  # (click's path makes it a dry run: see to_options)

    args = BuildArgs()
    words: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        option, value = _option(arg)
        if option is not None:
            if not option.fast or (option.kind == FLAG and value is not None):
                return None
            if option.kind != FLAG and value is None:
                if i + 1 >= len(argv):
                    return None  # click says the value is missing
                i += 1
                value = argv[i]
            if not _take(args, option, value):
                return None
        elif arg.startswith("-") or (not words and arg in COMMANDS):
            return None  # --help, `--`, combined short flags, a subcommand...
        else:
            words.append(arg)
        i += 1
    args.targets, args.overrides = split_args(words)
    return None if conflict(args.values) else args


def directory_values(argv: Sequence[str]) -> list[str]:
    """Every `-C` value in `argv`, wherever it stands (before a subcommand or
    after it), in order."""
    found: list[str] = []
    for i, arg in enumerate(argv):
        option, value = _option(arg)
        if option is DIRECTORY:
            if value is None and i + 1 < len(argv):
                value = argv[i + 1]
            if value is not None:
                found.append(value)
    return found


def _option(arg: str) -> tuple[Option | None, str | None]:
    """The declared option `arg` is, and the value written in it (`--jobs=4`,
    `-j4`), if any."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        return _BY_FLAG.get(name), value if eq else None
    option = _BY_FLAG.get(arg[:2]) if arg[:1] == "-" else None
    if option is None or len(arg) == 2:
        return option, None
    return (option, arg[2:]) if option.kind != FLAG else (None, None)  # `-ks`: combined flags


def _take(args: BuildArgs, option: Option, value: str | None) -> bool:
    """Record `value` for `option`; False if click might read it otherwise."""
    if option.kind == FLAG:
        args.values[option.dest] = True
    elif value is None:
        return False
    elif option.kind == JOBS:
        if not (value.isascii() and value.isdigit() and int(value) >= 1):
            return False
        args.values[option.dest] = int(value)
    elif option.kind == LOAD:
        try:
            number = float(value)
        except ValueError:
            return False
        if not number > 0:
            return False
        args.values[option.dest] = number
    elif option is DIRECTORY:
        args.directories.append(value)
    else:
        args.file = value
    return True
