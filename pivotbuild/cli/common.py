"""What the commands share: loading the project the options point at."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pivotbuild.cli.completion import complete_directory, complete_file

if TYPE_CHECKING:
    from pivotbuild.graph import BuildGraph
    from pivotbuild.project import Project

F = TypeVar("F", bound=Callable[..., Any])


def _chdir(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Each `-C DIR` in turn, each relative to the one before, as make does
    (`-C a -C b` is `-C a/b`)."""
    for directory in value:
        try:
            os.chdir(directory)
        except OSError as exc:
            raise click.BadParameter(f"cannot change to '{directory}': {exc.strerror}", ctx, param) from None
    return value


def _set_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        obj = ctx.ensure_object(dict)
        obj["file"] = value
    return value


def project_options(f: F) -> F:
    """`-C DIR` and `-f FILE`, accepted before the command and after it."""
    f = click.option(
        "-f",
        "--file",
        "file_",
        metavar="PATH",
        callback=_set_file,
        shell_complete=complete_file,
        expose_value=False,
        help="The Pivotfile (default: ./Pivotfile).",
    )(f)
    f = click.option(
        "-C",
        "--directory",
        metavar="DIR",
        multiple=True,
        callback=_chdir,
        shell_complete=complete_directory,
        expose_value=False,
        is_eager=True,
        help="Change to DIR first (each -C relative to the one before, as in make).",
    )(f)
    return f


def pivotfile_arg(ctx: click.Context) -> Path | None:
    """The `-f` value given before or after the command, if any."""
    root = ctx.find_root()
    value = (root.obj or {}).get("file")
    return Path(value) if value else None


def load(
    ctx: click.Context, overrides: Mapping[str, str] | None = None, all_pipelines: bool = False
) -> tuple[Project, BuildGraph]:
    """The project and its validated graph, from `-C`, `-f` and NAME=VALUE."""
    from pivotbuild.project import LoadOptions, load_project
    from pivotbuild.selection import open_graph

    options = LoadOptions(Path.cwd(), pivotfile_arg(ctx), overrides or {}, all_pipelines)
    project = load_project(options)
    return project, open_graph(project)
