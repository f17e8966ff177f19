"""`pivotbuild [OPTIONS] [TARGET | NAME=VALUE]...` (also `pivotbuild repro`)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pivotbuild.build.options import BuildOptions
from pivotbuild.cli.common import all_option, pivotfile_arg, project_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import make_reporter, terminate_as_interrupt
from pivotbuild.errors import UsageError

_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=(.*)", re.S)


def split_args(args: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """Targets and `NAME=VALUE` overrides, as make reads its command line."""
    targets: list[str] = []
    overrides: dict[str, str] = {}
    for arg in args:
        m = _ASSIGN.fullmatch(arg)
        if m:
            overrides[m.group(1)] = m.group(2)
        else:
            targets.append(arg)
    return tuple(targets), overrides


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run at most N jobs at once (default: the number of CPUs).",
)
@click.option(
    "-l",
    "--load-average",
    type=click.FloatRange(min=0, min_open=True),
    metavar="X",
    help="Start no new job while the load average is at least X.",
)
@click.option("-k", "--keep-going", is_flag=True, help="After a failure, keep building what does not depend on it.")
@click.option("-n", "--dry-run", is_flag=True, help="Print what would run and why; run nothing.")
@click.option("-q", "--question", is_flag=True, help="Run nothing; exit 0 if up to date, 1 if not.")
@click.option(
    "-B", "--always-make", is_flag=True, help="Rerun the selected stages and all they depend on, even if up to date."
)
@click.option("-w", "--watch", is_flag=True, help="Build, then rebuild whenever an input changes, until Ctrl-C.")
@all_option
@click.option("--explain", is_flag=True, help="Print for each stage why it runs or is skipped.")
@click.option("--json", "json_", is_flag=True, help="Machine output: one JSON event per line on stdout.")
@click.option("-s", "--quiet", is_flag=True, help="Less output.")
@click.option("-v", "--verbose", is_flag=True, help="More output.")
@click.option("--no-cache", is_flag=True, help="Do not store outputs in the cache.")
@click.option("--no-commit", is_flag=True, help="Run, but record results as pending ('pivotbuild commit').")
@click.option("--no-wait", is_flag=True, help="If another build holds the project, exit 1 instead of waiting.")
@project_options
@click.pass_context
def repro(ctx: click.Context, /, args: tuple[str, ...], **flags: object) -> int:
    """Build targets and what they depend on (what a bare `pivotbuild` does)."""
    options = build_options(ctx, args, flags)
    if options.watch:
        raise UsageError("watch mode (-w) is not available in this version yet; run the build again instead")
    from pivotbuild.build.engine import Engine

    reporter = make_reporter(options)
    with terminate_as_interrupt():
        try:
            return Engine(reporter).build(options)
        finally:
            reporter.close()


def build_options(ctx: click.Context, args: tuple[str, ...], flags: dict[str, object]) -> BuildOptions:
    """Validate flag combinations and gather them into a BuildOptions."""
    targets, overrides = split_args(args)
    pairs = [("dry_run", "question"), ("quiet", "verbose"), ("watch", "dry_run"), ("watch", "question")]
    for a, b in pairs:
        if flags.get(a) and flags.get(b):
            names = {"dry_run": "-n", "question": "-q", "quiet": "-s", "verbose": "-v", "watch": "-w"}
            raise click.UsageError(f"{names[a]} and {names[b]} cannot be used together", ctx)
    return BuildOptions(
        cwd=Path.cwd(),
        file=pivotfile_arg(ctx),
        targets=targets,
        overrides=overrides,
        jobs=flags["jobs"],  # type: ignore[arg-type]
        load_average=flags["load_average"],  # type: ignore[arg-type]
        keep_going=bool(flags["keep_going"]),
        dry_run=bool(flags["dry_run"]),
        question=bool(flags["question"]),
        always_make=bool(flags["always_make"]),
        watch=bool(flags["watch"]),
        all_pipelines=bool(flags["all_pipelines"]),
        explain=bool(flags["explain"]),
        json=bool(flags["json_"]),
        quiet=bool(flags["quiet"]),
        verbose=bool(flags["verbose"]),
        no_cache=bool(flags["no_cache"]),
        no_commit=bool(flags["no_commit"]),
        no_wait=bool(flags["no_wait"]),
    )
