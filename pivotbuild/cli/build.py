"""`pivotbuild [OPTIONS] [TARGET | NAME=VALUE]...` (also `pivotbuild repro`).

Its options are those buildargs.py declares, which the fast path
(cli/fast.py) reads too; both make the build's options with
`buildargs.to_options`."""

from __future__ import annotations

from pathlib import Path

import click

from pivotbuild.build.options import BuildOptions
from pivotbuild.cli.buildargs import BUILD_OPTIONS, BuildArgs, conflict, to_options
from pivotbuild.cli.common import F, click_option, project_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import leave_if_starting, make_reporter, makes_pool, terminate_as_interrupt


def build_command_options(f: F) -> F:
    """The build's options, as buildargs.py declares them, in their order."""
    for option in reversed(BUILD_OPTIONS):
        f = click_option(option)(f)
    return f


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@build_command_options
@project_options
@click.pass_context
def repro(ctx: click.Context, /, args: tuple[str, ...], **flags: object) -> int:
    """Build targets and what they depend on (what a bare `pivotbuild` does)."""
    options = build_options(ctx, args, flags)
    if options.watch:
        from pivotbuild.cli.watch import watch

        return watch(options)
    from pivotbuild.build.engine import Engine

    reporter = make_reporter(options)
    leave_if_starting()
    with terminate_as_interrupt(), makes_pool(options) as jobserver:
        try:
            return Engine(reporter, jobserver=jobserver).build(options)
        finally:
            reporter.close()


def build_options(ctx: click.Context, args: tuple[str, ...], flags: dict[str, object]) -> BuildOptions:
    """Validate flag combinations and gather them into a BuildOptions."""
    message = conflict(flags)
    if message is not None:
        raise click.UsageError(message, ctx)
    root = ctx.find_root().obj or {}
    return to_options(BuildArgs(args, flags, file=root.get("file")), Path.cwd())
