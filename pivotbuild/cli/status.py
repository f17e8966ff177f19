"""`pivotbuild status [TARGETS]`: each stage up to date, or the reason it would run."""

from __future__ import annotations

import json
import os
import sys

import click

from pivotbuild.cli.common import again, all_option, project_options, stage_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import make_reporter

_CTX = {"help_option_names": ["-h", "--help"]}


@click.command(context_settings=_CTX)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {stage, up_to_date, reason}.")
@all_option
@project_options
@click.pass_context
def status(ctx: click.Context, /, args: tuple[str, ...], as_json: bool, all_pipelines: bool) -> int:
    """Each stage's state: up to date, or why it would run (changed dep, param,
    command, missing output, never run).  Covers what the build would: the
    TARGETS, else the `default` targets (else every stage), and what they need.
    A stage built with --no-commit is "pending commit" until `pivotbuild
    commit`; the build does not run it again (up_to_date is true).  Runs
    nothing; exit status 0."""
    from pivotbuild.build.decider import PENDING_COMMIT
    from pivotbuild.build.engine import Engine

    options = stage_options(ctx, args, all_pipelines)
    reporter = make_reporter(options)
    # From inside a stage, the running build holds the project lock: read the state without it.
    rows = Engine(reporter).status(options, read_only="PIVOT_STAGE" in os.environ)
    if as_json:
        data = [{"stage": label, "up_to_date": not d.run, "reason": d.reason} for label, d in rows]
        click.echo(json.dumps(data, indent=2))
        return 0
    width = max((len(label) for label, _ in rows), default=0)
    for label, d in rows:
        click.echo(f"{label:<{width}}  {d.reason}")
    stale = sum(1 for _, d in rows if d.run)
    pending = [label for label, d in rows if d.reason == PENDING_COMMIT]
    if stale:
        summary = f"{stale} of {len(rows)} stages would run; '{again(ctx, '', args, all_pipelines)}' runs them"
    else:
        summary = "everything is up to date"
    if pending:
        # `commit TARGETS` takes the named stages only; these may be what they need.
        named = (*pending, *(f"{k}={v}" for k, v in options.overrides.items())) if options.targets else args
        fix = again(ctx, "commit", named, all_pipelines)
        summary += f"; {len(pending)} stage(s) pending commit: '{fix}' records them"
    print(f"pivotbuild: {summary}", file=sys.stderr)
    return 0
