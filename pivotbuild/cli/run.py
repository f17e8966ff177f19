"""`pivotbuild run STAGE...`: exactly these stages, in this order, no dependencies."""

from __future__ import annotations

from pathlib import Path

import click

from pivotbuild.build.options import BuildOptions
from pivotbuild.cli.buildargs import split_args
from pivotbuild.cli.common import pivotfile_arg, project_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import make_reporter, makes_pool, terminate_as_interrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=True, metavar="STAGE... [NAME=VALUE]...", shell_complete=complete_targets)
@click.option("-B", "--always-make", is_flag=True, help="Run them even if up to date.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failure (default: go on with the rest).")
@click.option("--json", "json_", is_flag=True, help="Machine output: one JSON event per line on stdout.")
@click.option("-s", "--quiet", is_flag=True, help="Less output.")
@click.option("-v", "--verbose", is_flag=True, help="More output.")
@click.option("--no-wait", is_flag=True, help="If another build holds the project, exit 1 instead of waiting.")
@click.option(
    "--executor",
    metavar="URL",
    help="Where they run: local, or dask://HOST:PORT (default: .pivot/config.toml's [executor]).",
)
@project_options
@click.pass_context
def run(ctx: click.Context, /, args: tuple[str, ...], executor: str | None, **flags: bool) -> int:
    """Bring exactly these stages up to date, in the order given, without
    building their dependencies.  Up-to-date stages are skipped unless -B."""
    from pivotbuild.build.engine import Engine

    targets, overrides = split_args(args)
    if not targets:
        raise click.UsageError("name at least one stage to run", ctx)
    options = BuildOptions(
        cwd=Path.cwd(),
        file=pivotfile_arg(ctx),
        targets=targets,
        overrides=overrides,
        always_make=flags["always_make"],
        json=flags["json_"],
        quiet=flags["quiet"],
        verbose=flags["verbose"],
        no_wait=flags["no_wait"],
        executor=executor,
    )
    reporter = make_reporter(options)
    with terminate_as_interrupt(), makes_pool(options) as jobserver:
        try:
            return Engine(reporter, jobserver=jobserver).run_stages(options, fail_fast=flags["fail_fast"])
        finally:
            reporter.close()
