"""`verify`, `checkout` and `clean`: the workspace against the lockfile and the cache.

Without targets each covers what a plain build covers: the `default` targets
and every stage they need (every stage without a `default`); with TARGETS,
the named stages.  Every hint names a command that fixes what it reports, for
the same project and stages (same -C, -f, --all and targets)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pivotbuild.cli.common import SCOPE_HELP, again, all_option, project_options, stage_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import make_reporter

_CTX = {"help_option_names": ["-h", "--help"]}


def _say(text: str) -> None:
    print(f"pivotbuild: {text}", file=sys.stderr)


@click.command(context_settings=_CTX, epilog=SCOPE_HELP)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@all_option
@project_options
@click.pass_context
def verify(ctx: click.Context, /, args: tuple[str, ...], all_pipelines: bool) -> int:
    """Exit 1 if an output on disk is not what the lockfile records (for CI),
    listing each difference; exit 0 if every one matches.  Results of a
    --no-commit build count as differences until `pivotbuild commit`."""
    from pivotbuild.build.decider import PENDING_COMMIT
    from pivotbuild.build.engine import Engine
    from pivotbuild.workspace import verify as run_verify

    options = stage_options(ctx, args, all_pipelines)
    diffs = run_verify(Engine(make_reporter(options)), options)
    for d in diffs:
        click.echo(f"{d.what}: {d.path} (stage {d.label})")
    if not diffs:
        _say("every recorded output matches the lockfile")
        return 0
    _say(f"{len(diffs)} output(s) differ from the lockfile")
    build = again(ctx, "", args, all_pipelines)
    for what in (PENDING_COMMIT, "not recorded", "missing", "modified"):
        found = [d for d in diffs if d.what == what]
        if not found:
            continue
        if what == PENDING_COMMIT:
            fix = f"built with --no-commit: '{again(ctx, 'commit', args, all_pipelines)}' records them"
        else:
            fix = f"'{build}' {'builds' if what == 'not recorded' else 'rebuilds'} them"
        if what in ("missing", "modified") and all(d.restorable for d in found):
            force = "checkout" if what == "missing" else "checkout --force"
            fix += f", or '{again(ctx, force, args, all_pipelines)}' restores them from the cache"
        _say(f"{len(found)} {what}: {fix}")
    return 1


@click.command(context_settings=_CTX, epilog=SCOPE_HELP)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@click.option("--force", is_flag=True, help="Overwrite modified outputs even when their content is not in the cache.")
@all_option
@project_options
@click.pass_context
def checkout(ctx: click.Context, /, args: tuple[str, ...], force: bool, all_pipelines: bool) -> int:
    """Restore the outputs recorded in the lockfile from the cache; runs nothing.

    An output modified in the workspace is replaced when its content is in
    the local cache too (as after `git checkout` of another branch's
    lockfile); one whose content exists nowhere else is not overwritten
    without --force (the refusal lists them, exit 1).  Outputs declared cache=false are never
    in the cache and are left to the next build, as are pending --no-commit
    results (the newest, not cached until `pivotbuild commit`)."""
    from pivotbuild.build.engine import Engine
    from pivotbuild.workspace import checkout as run_checkout

    options = stage_options(ctx, args, all_pipelines)
    report = run_checkout(Engine(make_reporter(options)), options, force)
    for path in report.restored:
        click.echo(f"restored {path}")
    code = 0
    if report.refused:
        for d in report.refused:
            _say(f"{d.path} was modified in the workspace (stage {d.label}) and that content is not in the cache")
        _say(f"left them alone; run '{again(ctx, 'checkout --force', args, all_pipelines)}' to overwrite them")
        code = 1
    if report.unavailable:
        listed = ", ".join(report.unavailable)
        _say(f"not in the cache: {listed}; build them with '{again(ctx, '', args, all_pipelines)}'")
        code = 1
    return code


@click.command(context_settings=_CTX, epilog=SCOPE_HELP)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@all_option
@project_options
@click.pass_context
def clean(ctx: click.Context, /, args: tuple[str, ...], all_pipelines: bool) -> int:
    """Delete the outputs of the selected stages.  The cache keeps its copies,
    so 'pivotbuild checkout' can bring them back."""
    from pivotbuild.build.engine import Engine
    from pivotbuild.workspace import clean as run_clean

    options = stage_options(ctx, args, all_pipelines)
    for path in run_clean(Engine(make_reporter(options)), options):
        click.echo(f"removed {path}")
    return 0


@click.command(context_settings=_CTX)
@click.option("-n", "--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--keep-run-cache", is_flag=True, help="Keep run-cache entries, and the objects they need.")
@all_option
@project_options
def gc(dry_run: bool, keep_run_cache: bool, all_pipelines: bool) -> int:
    """Delete cache objects that no lockfile of the project references, and the
    run-cache entries that pointed at them.  Results a killed build left in a
    journal, and pending --no-commit results, count as references too.  It
    always looks at every pipeline under the project root (as with --all)."""
    from pivotbuild.cache.gc import collect
    from pivotbuild.cache.outputs import CACHE_DIR
    from pivotbuild.cache.store import Cache
    from pivotbuild.paths import STATE_DIR, find_root
    from pivotbuild.state.projectlock import ProjectLock

    root = find_root(Path.cwd())
    with ProjectLock(root / STATE_DIR, wait=True, on_wait=_say):
        report = collect(root, Cache(root / STATE_DIR / CACHE_DIR), keep_run_cache=keep_run_cache, dry_run=dry_run)
    if dry_run:
        for digest in report.objects:
            click.echo(f"would delete object {digest}")
        for entry in report.run_entries:
            click.echo(f"would delete run-cache entry {entry}")
    verb = "would free" if dry_run else "freed"
    mib = report.freed_bytes / (1 << 20)
    _say(f"{len(report.objects)} object(s), {len(report.run_entries)} run-cache entr(ies); {verb} {mib:.1f} MiB")
    return 0


@click.command(context_settings=_CTX, epilog=SCOPE_HELP)
@click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)
@all_option
@project_options
@click.pass_context
def commit(ctx: click.Context, /, args: tuple[str, ...], all_pipelines: bool) -> int:
    """Promote results recorded by `pivotbuild --no-commit`: cache their outputs
    and write them to the lockfile.  A stage whose outputs changed since it ran
    is refused (exit 1); run it again."""
    from pivotbuild.build.engine import Engine
    from pivotbuild.workspace import commit as run_commit

    options = stage_options(ctx, args, all_pipelines)
    committed, refused = run_commit(Engine(make_reporter(options)), options)
    for name in committed:
        click.echo(f"committed {name}")
    overrides = tuple(f"{k}={v}" for k, v in options.overrides.items())
    for refusal in refused:
        rerun = again(ctx, "", (refusal.stage, *overrides), all_pipelines)
        _say(f"{refusal.stage}: {refusal.why}; rebuild it with '{rerun}', which records the result")
    if not committed and not refused:
        _say("nothing pending to commit")
    return 1 if refused else 0
