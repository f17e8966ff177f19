"""`verify`, `checkout` and `clean`: the workspace against the lockfile and the cache."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pivotbuild.cli.build import split_args
from pivotbuild.cli.common import pivotfile_arg, project_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import make_reporter
from pivotbuild.options import BuildOptions

_CTX = {"help_option_names": ["-h", "--help"]}


def _options(ctx: click.Context, args: tuple[str, ...]) -> BuildOptions:
    targets, overrides = split_args(args)
    return BuildOptions(Path.cwd(), pivotfile_arg(ctx), targets, overrides)


@click.command(context_settings=_CTX)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@project_options
@click.pass_context
def verify(ctx: click.Context, /, args: tuple[str, ...]) -> int:
    """Exit 1 if a recorded output on disk differs from the lockfile (for CI),
    listing each difference; exit 0 if every one matches."""
    from pivotbuild.engine import Engine
    from pivotbuild.workspace import verify as run_verify

    options = _options(ctx, args)
    diffs = run_verify(Engine(make_reporter(options)), options)
    for d in diffs:
        click.echo(f"{d.what}: {d.path} (stage {d.label})")
    if diffs:
        print(
            f"pivotbuild: {len(diffs)} output(s) differ from the lockfile; run 'pivotbuild' or 'pivotbuild checkout'",
            file=sys.stderr,
        )
        return 1
    print("pivotbuild: every recorded output matches the lockfile", file=sys.stderr)
    return 0


@click.command(context_settings=_CTX)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@click.option("--force", is_flag=True, help="Overwrite outputs that were modified in the workspace.")
@project_options
@click.pass_context
def checkout(ctx: click.Context, /, args: tuple[str, ...], force: bool) -> int:
    """Restore the outputs recorded in the lockfile from the cache; runs nothing.

    An output modified in the workspace is not overwritten without --force
    (the refusal lists them, exit 1).  Outputs declared cache=false are never
    in the cache and are left to the next build."""
    from pivotbuild.engine import Engine
    from pivotbuild.workspace import checkout as run_checkout

    options = _options(ctx, args)
    report = run_checkout(Engine(make_reporter(options)), options, force)
    for path in report.restored:
        click.echo(f"restored {path}")
    code = 0
    if report.refused:
        for d in report.refused:
            print(f"pivotbuild: {d.path} was modified in the workspace (stage {d.label})", file=sys.stderr)
        print("pivotbuild: left them alone; run 'pivotbuild checkout --force' to overwrite them", file=sys.stderr)
        code = 1
    if report.unavailable:
        listed = ", ".join(report.unavailable)
        print(f"pivotbuild: not in the cache: {listed}; build them with 'pivotbuild'", file=sys.stderr)
        code = 1
    return code


@click.command(context_settings=_CTX)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@project_options
@click.pass_context
def clean(ctx: click.Context, /, args: tuple[str, ...]) -> int:
    """Delete the outputs of the selected stages (all stages without targets).
    The cache keeps its copies, so 'pivotbuild checkout' can bring them back."""
    from pivotbuild.engine import Engine
    from pivotbuild.workspace import clean as run_clean

    options = _options(ctx, args)
    for path in run_clean(Engine(make_reporter(options)), options):
        click.echo(f"removed {path}")
    return 0


@click.command(context_settings=_CTX)
@click.option("-n", "--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--keep-run-cache", is_flag=True, help="Keep run-cache entries, and the objects they need.")
@project_options
def gc(dry_run: bool, keep_run_cache: bool) -> int:
    """Delete cache objects that no lockfile of the project references, and the
    run-cache entries that pointed at them.  Results a killed build left in a
    journal, and pending --no-commit results, count as references too."""
    from pivotbuild.cache.gc import collect
    from pivotbuild.cache.outputs import CACHE_DIR
    from pivotbuild.cache.store import Cache
    from pivotbuild.paths import STATE_DIR, find_root
    from pivotbuild.state.projectlock import ProjectLock

    root = find_root(Path.cwd())

    def say(text: str) -> None:
        print(f"pivotbuild: {text}", file=sys.stderr)

    with ProjectLock(root / STATE_DIR, wait=True, on_wait=say):
        report = collect(root, Cache(root / STATE_DIR / CACHE_DIR), keep_run_cache=keep_run_cache, dry_run=dry_run)
    if dry_run:
        for digest in report.objects:
            click.echo(f"would delete object {digest}")
        for entry in report.run_entries:
            click.echo(f"would delete run-cache entry {entry}")
    verb = "would free" if dry_run else "freed"
    mib = report.freed_bytes / (1 << 20)
    say(f"{len(report.objects)} object(s), {len(report.run_entries)} run-cache entr(ies); {verb} {mib:.1f} MiB")
    return 0


@click.command(context_settings=_CTX)
@click.argument("args", nargs=-1, metavar="[TARGET]...", shell_complete=complete_targets)
@project_options
@click.pass_context
def commit(ctx: click.Context, /, args: tuple[str, ...]) -> int:
    """Promote results recorded by `pivotbuild --no-commit`: cache their outputs
    and write them to the lockfile.  A stage whose outputs changed since it ran
    is refused (exit 1); run it again."""
    from pivotbuild.engine import Engine
    from pivotbuild.workspace import commit as run_commit

    options = _options(ctx, args)
    committed, refused = run_commit(Engine(make_reporter(options)), options)
    for name in committed:
        click.echo(f"committed {name}")
    for refusal in refused:
        print(f"pivotbuild: {refusal.stage}: {refusal.why}", file=sys.stderr)
    if not committed and not refused:
        print("pivotbuild: nothing pending to commit", file=sys.stderr)
    return 1 if refused else 0
