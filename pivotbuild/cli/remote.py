"""`remote add|list|remove`, `push`, `fetch` and `pull`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from pivotbuild.build.options import BuildOptions
from pivotbuild.cli.common import SCOPE_HELP, all_option, project_options, stage_options
from pivotbuild.cli.completion import complete_targets
from pivotbuild.cli.running import make_reporter
from pivotbuild.paths import find_root

_CTX = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=_CTX)
def remote() -> None:
    """Configure remotes (in .pivot/config.toml, which you commit)."""


@remote.command("add", context_settings=_CTX)
@click.argument("name")
@click.argument("url")
@click.option("-d", "--default", "make_default", is_flag=True, help="Make it the default remote.")
@click.option("--endpoint-url", metavar="URL", help="An S3-compatible server (MinIO, SeaweedFS, R2...).")
@click.option("--region", metavar="REGION", help="The bucket's region.")
@click.option("--profile", metavar="NAME", help="The AWS profile to read credentials from.")
@project_options
def remote_add(
    *, name: str, url: str, make_default: bool, endpoint_url: str | None, region: str | None, profile: str | None
) -> int:
    """Add remote NAME at URL: a directory (a path or file://), e.g. a mounted
    share, or an object store (s3://BUCKET/PREFIX, gs://..., az://...).
    Credentials come from the environment or a profile, never the config."""
    from pivotbuild.remote import config

    root = find_root(Path.cwd())
    cfg = config.load(root)
    given = {"endpoint_url": endpoint_url, "region": region, "profile": profile}
    settings = {key: value for key, value in given.items() if value}
    config.check_url(url, root, settings)
    cfg.remotes[name] = url
    cfg.settings.pop(name, None)
    if settings:
        cfg.settings[name] = settings
    if make_default or cfg.default is None:
        cfg.default = name
    config.save(root, cfg)
    click.echo(f"pivotbuild: remote {name} -> {url}" + (" (default)" if cfg.default == name else ""), err=True)
    return 0


@remote.command("list", context_settings=_CTX)
@project_options
def remote_list() -> int:
    """The configured remotes; the default one is marked."""
    from pivotbuild.remote import config

    cfg = config.load(find_root(Path.cwd()))
    for name in sorted(cfg.remotes):
        mark = " (default)" if name == cfg.default else ""
        click.echo(f"{name}\t{cfg.remotes[name]}{mark}")
    return 0


@remote.command("remove", context_settings=_CTX)
@click.argument("name")
@project_options
def remote_remove(name: str) -> int:
    """Forget remote NAME (its contents are left alone)."""
    from pivotbuild.remote import config

    root = find_root(Path.cwd())
    cfg = config.load(root)
    if name not in cfg.remotes:
        raise click.UsageError(f"no remote named '{name}'")
    del cfg.remotes[name]
    cfg.settings.pop(name, None)
    if cfg.default == name:
        cfg.default = None
    config.save(root, cfg)
    return 0


def _transfer_options(f: Callable[..., int]) -> Callable[..., int]:
    f = click.option(
        "-j", "--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Parallel transfers."
    )(f)
    f = click.option("-r", "--remote", "remote_name", metavar="NAME", help="The remote (default: core.remote).")(f)
    f = all_option(f)
    f = click.argument("args", nargs=-1, metavar="[TARGET | NAME=VALUE]...", shell_complete=complete_targets)(f)
    return f


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _move(options: BuildOptions, remote_name: str | None, jobs: int, direction: str) -> int:
    from pivotbuild.build.engine import Engine
    from pivotbuild.cache.outputs import OutputCache
    from pivotbuild.remote import config, open_remote, transfer
    from pivotbuild.workspace import transfer_set

    engine = Engine(make_reporter(options))
    chosen = transfer_set(engine, options, stale=direction == "fetch", entries=direction == "push")
    project, outs, stages = chosen.project, chosen.outs, chosen.stages
    cfg = config.load(project.root)
    name, url = cfg.remote_url(remote_name)
    moved = open_remote(project.root, name, url, cfg.settings.get(name, {}))
    cache = OutputCache(project.root, engine.warn).cache
    with _progress(f"{direction} {name}") as progress:
        if direction == "push":
            report = transfer.push(cache, moved, outs, stages, jobs=jobs, progress=progress)
        else:
            report = transfer.fetch(cache, moved, outs, stages, jobs=jobs, progress=progress, check=chosen.stale)
    for note in report.notes:
        click.echo(f"pivotbuild: {note}", err=True)
    for problem in report.problems:
        click.echo(f"pivotbuild: {problem}", err=True)
    verb = "pushed to" if direction == "push" else "fetched from"
    click.echo(f"pivotbuild: {report.moved} object(s) {verb} {name}, {report.already} already there", err=True)
    return 1 if report.problems else 0


@click.command(context_settings=_CTX, epilog=SCOPE_HELP)
@_transfer_options
@project_options
@click.pass_context
def push(ctx: click.Context, /, args: tuple[str, ...], all_pipelines: bool, remote_name: str | None, jobs: int) -> int:
    """Send the cached outputs the lockfile records for the stages, and their
    run-cache entries, to a remote; only what it lacks, each object written
    atomically."""
    return _move(stage_options(ctx, args, all_pipelines), remote_name, jobs, "push")


@click.command(context_settings=_CTX, epilog=SCOPE_HELP)
@_transfer_options
@project_options
@click.pass_context
def fetch(ctx: click.Context, /, args: tuple[str, ...], all_pipelines: bool, remote_name: str | None, jobs: int) -> int:
    """Bring the objects the lockfile names (and the run-cache entries) from a
    remote into the cache, verifying each; the workspace is not touched."""
    return _move(stage_options(ctx, args, all_pipelines), remote_name, jobs, "fetch")


@click.command(context_settings=_CTX, epilog=SCOPE_HELP)
@_transfer_options
@project_options
@click.pass_context
def pull(ctx: click.Context, /, args: tuple[str, ...], all_pipelines: bool, remote_name: str | None, jobs: int) -> int:
    """fetch, then checkout: on a fresh clone, `pivotbuild pull && pivotbuild`
    runs nothing that was built before."""
    from pivotbuild.cli.workspace import checkout

    code = _move(stage_options(ctx, args, all_pipelines), remote_name, jobs, "fetch")
    restored = ctx.invoke(checkout, args=args, force=False, all_pipelines=all_pipelines)
    return max(code, int(restored or 0))
