"""What the commands share: loading the project the options point at."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click

from pivotbuild.cli.app import pivotfile_arg
from pivotbuild.graph import BuildGraph
from pivotbuild.project import LoadOptions, Project, load_project
from pivotbuild.selection import open_graph


def load(
    ctx: click.Context, overrides: Mapping[str, str] | None = None, all_pipelines: bool = False
) -> tuple[Project, BuildGraph]:
    """The project and its validated graph, from `-C`, `-f` and NAME=VALUE."""
    options = LoadOptions(Path.cwd(), pivotfile_arg(ctx), overrides or {}, all_pipelines)
    project = load_project(options)
    return project, open_graph(project)
