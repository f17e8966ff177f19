"""`pivotbuild status [TARGETS]`: each stage up to date, or the reason it would run."""

from __future__ import annotations

import json
import sys

import click

from pivotbuild.cli.build import split_args
from pivotbuild.cli.common import pivotfile_arg, project_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import make_reporter
from pivotbuild.options import BuildOptions

_CTX = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=_CTX)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {stage, up_to_date, reason}.")
@click.option("--all", "all_pipelines", is_flag=True, help="Every pipeline under the project root.")
@project_options
@click.pass_context
def status(ctx: click.Context, /, args: tuple[str, ...], as_json: bool, all_pipelines: bool) -> int:
    """Each stage's state: up to date, or why it would run (changed dep, param,
    command, missing output, never run).  Runs nothing; exit status 0."""
    from pathlib import Path

    from pivotbuild.engine import Engine

    targets, overrides = split_args(args)
    options = BuildOptions(Path.cwd(), pivotfile_arg(ctx), targets, overrides, all_pipelines=all_pipelines)
    reporter = make_reporter(options)
    rows = Engine(reporter).status(options)
    if as_json:
        data = [{"stage": label, "up_to_date": not d.run, "reason": d.reason} for label, d in rows]
        click.echo(json.dumps(data, indent=2))
        return 0
    width = max((len(label) for label, _ in rows), default=0)
    for label, d in rows:
        click.echo(f"{label:<{width}}  {d.reason}")
    stale = sum(1 for _, d in rows if d.run)
    summary = "everything is up to date" if not stale else f"{stale} of {len(rows)} stages would run"
    print(f"pivotbuild: {summary}", file=sys.stderr)
    return 0
