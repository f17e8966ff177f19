"""What the commands share: loading the project the options point at."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pivotbuild.cli.buildargs import ALL, DIRECTORY, FILE, FLAG, JOBS, LOAD, MS, SIZE, TEXT, Option, enter, split_args
from pivotbuild.cli.completion import complete_directory, complete_file

if TYPE_CHECKING:
    from pivotbuild.build.options import BuildOptions
    from pivotbuild.graph import BuildGraph
    from pivotbuild.project import Project

F = TypeVar("F", bound=Callable[..., Any])


def click_option(option: Option, **attrs: Any) -> Callable[[F], F]:
    """The click option an option of buildargs.py declares (with `attrs`)."""
    kinds: dict[str, dict[str, Any]] = {
        FLAG: {"is_flag": True},
        JOBS: {"type": click.IntRange(min=1)},
        LOAD: {"type": click.FloatRange(min=0, min_open=True)},
        MS: {"type": click.IntRange(min=0)},
        SIZE: {"type": MemorySize()},
        TEXT: {},
    }
    return click.option(
        *option.flags, option.dest, metavar=option.metavar, help=option.help, **kinds[option.kind], **attrs
    )


class MemorySize(click.ParamType):  # type: ignore[type-arg]
    """A memory size as `mem:` takes it (`512M`, `8G`): its bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from pivotbuild.pivotfile.units import parse_size

        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size <= 0:
            self.fail(f"'{value}' is not a memory size above 0", param, ctx)
        return size


def _chdir(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    if value:  # remembered, so a hint can name a command that runs in the same place
        ctx.ensure_object(dict).setdefault("dirs", []).extend(value)
    try:
        enter(value)
    except OSError as exc:
        raise click.BadParameter(f"cannot change to '{exc.filename}': {exc.strerror}", ctx, param) from None
    return value


def _set_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        obj = ctx.ensure_object(dict)
        obj["file"] = value
    return value


def project_options(f: F) -> F:
    """`-C DIR` and `-f FILE`, accepted before the command and after it."""
    f = click_option(FILE, callback=_set_file, shell_complete=complete_file, expose_value=False)(f)
    return click_option(
        DIRECTORY,
        multiple=True,
        callback=_chdir,
        shell_complete=complete_directory,
        expose_value=False,
        is_eager=True,
    )(f)


# The epilog of the commands that take TARGETS and act on the named stages.
SCOPE_HELP = (
    "Without TARGETS: the stages a plain `pivotbuild` builds (the `default` targets and what they need, "
    "else every stage; with --all, of every pipeline)."
)


def all_option(f: F) -> F:
    """`--all`, with one meaning for every command that works on pipelines."""
    return click_option(ALL)(f)


def pivotfile_arg(ctx: click.Context) -> Path | None:
    """The `-f` value given before or after the command, if any."""
    root = ctx.find_root()
    value = (root.obj or {}).get("file")
    return Path(value) if value else None


def load(
    ctx: click.Context, overrides: Mapping[str, str] | None = None, all_pipelines: bool = False
) -> tuple[Project, BuildGraph]:
    """The project and its validated graph, from `-C`, `-f` and NAME=VALUE."""
    from pivotbuild.build.selection import open_graph
    from pivotbuild.project import LoadOptions, load_project

    options = LoadOptions(Path.cwd(), pivotfile_arg(ctx), overrides or {}, all_pipelines)
    project = load_project(options)
    return project, open_graph(project)


def stage_options(ctx: click.Context, args: Sequence[str], all_pipelines: bool) -> BuildOptions:
    """What a command acting on stages was given: targets and NAME=VALUE from
    `args`, `-f`, `--all`.  Without targets every such command covers what a
    plain build covers (see workspace._chosen)."""
    from pivotbuild.build.options import BuildOptions

    targets, overrides = split_args(tuple(args))
    return BuildOptions(Path.cwd(), pivotfile_arg(ctx), targets, overrides, all_pipelines=all_pipelines)


def again(ctx: click.Context, command: str = "", args: Sequence[str] = (), all_pipelines: bool = False) -> str:
    """The `pivotbuild` command line, as it would be typed where the user is,
    that runs `command` (the build if empty) on the same project and stages as
    this invocation: its -C and -f, `--all`, then `args`.  For hints."""
    from pivotbuild.cli.names import COMMANDS

    obj = ctx.find_root().obj or {}
    words = ["pivotbuild"]
    for directory in obj.get("dirs", ()):
        words += ["-C", directory]
    if obj.get("file"):
        words += ["-f", obj["file"]]
    if command:
        words += command.split()
    elif args and args[0] in COMMANDS:
        words.append("repro")  # a target named like a subcommand
    if all_pipelines:
        words.append("--all")
    words += args
    return shlex.join(words)
