"""`pivotbuild rpc METHOD [JSON]`: one call to this project's agent server."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pivotbuild.cli.common import pivotfile_arg, project_options
from pivotbuild.paths import AGENT_SOCKET, find_root, pivotfile_path
from pivotbuild.rpc.client import call


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("method")
@click.argument("params", required=False, metavar="[JSON]")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30,
    show_default=True,
    metavar="SECONDS",
    help="Give up if the server has not answered by then.",
)
@project_options
@click.pass_context
def rpc(ctx: click.Context, /, method: str, params: str | None, timeout: float) -> int:
    """Call METHOD of the agent server of this project (`pivotbuild -w --serve`)
    with the params in JSON (an object, e.g. '{"stage": "train"}'), and print
    its result as one JSON line.  Methods: stages, status, run, cancel,
    events_since, explain (see docs/rpc.md).  Exit status: 0 answered; 1 the
    server answered with an error; 2 no server is running."""
    arguments = None
    if params is not None:
        example = """pass one object, e.g. '{"stage": "train"}'"""
        try:
            arguments = json.loads(params)
        except ValueError as exc:
            raise click.UsageError(f"the params are not JSON ({exc}); {example}", ctx) from None
        if not isinstance(arguments, dict):
            raise click.UsageError(f"the params are not a JSON object: {params}; {example}", ctx)
    # The root a build of this Pivotfile uses (project.load_project), so -C and -f reach its server.
    root = find_root(pivotfile_path(Path.cwd(), pivotfile_arg(ctx)).parent)
    result = call(root / AGENT_SOCKET, method, arguments, timeout)
    click.echo(json.dumps(result))
    return 0
