"""`pivotbuild init`: create `.pivot/` at the project root."""

from __future__ import annotations

from pathlib import Path

import click

from pivotbuild.cli.common import project_options
from pivotbuild.errors import PivotError, ProjectError
from pivotbuild.paths import PIPELINE_ONLY, STATE_DIR, find_root, is_root_state
from pivotbuild.state.files import ensure_state_dir


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@project_options
@click.option("--no-git", is_flag=True, help="Do not set up git's lockfile diff and merge drivers.")
def init(no_git: bool) -> int:
    """Make the current directory a project root: create `.pivot/` with its own
    `.gitignore` (everything in it is ignored except config.toml).

    In a git repository it also makes git diff lockfiles as `lock show` text
    and merge them with `lock merge`: a line in `.gitattributes` (commit it)
    and the two drivers in the repository's git config (each clone runs
    `pivotbuild init` once).  --no-git skips that.  Running it again changes
    nothing.

    Inside an existing project it creates nothing: that project's root is the
    root here too.  A directory built as an included pipeline of a project
    (its `.pivot/` marked by `pipeline-state`) becomes a root of its own once
    no Pivotfile of that project includes it."""
    here = Path.cwd().resolve()
    if not no_git:
        _set_up_git(here)
    if (here / STATE_DIR / PIPELINE_ONLY).exists():
        return _unmark(here)
    root = find_root(here)
    if is_root_state(root):
        where = "a project root" if root == here else f"inside the project rooted at {root}, which builds here use"
        click.echo(f"pivotbuild: {here} is already {where} ({root / STATE_DIR} exists)", err=True)
        return 0
    ensure_state_dir(here)
    click.echo(
        f"pivotbuild: created {here / STATE_DIR}; commit .pivot/.gitignore (and later .pivot/config.toml)", err=True
    )
    return 0


def _set_up_git(here: Path) -> None:
    """The lockfile drivers, if `here` is in a git work tree (else nothing)."""
    from pivotbuild.cli import gitsetup

    top = gitsetup.work_tree(here)
    if top is None:
        return
    try:
        done = gitsetup.set_up(top)
    except OSError as exc:
        raise PivotError(
            f"setting up git's lockfile drivers in {top}: {exc}; fix it, or run 'pivotbuild init --no-git'"
        ) from exc
    for what in done:
        click.echo(f"pivotbuild: git: {what}", err=True)


def _unmark(here: Path) -> int:
    """Make the directory of a once-included pipeline a root, unless a Pivotfile
    of its project still includes it (its builds would mark it again)."""
    from pivotbuild.project import including

    marker = here / STATE_DIR / PIPELINE_ONLY
    root = find_root(here)  # passes over the marked .pivot/ here
    users = including(root, here) if root != here else []
    if users:
        listed = ", ".join(str(root / u) for u in users)
        verb = "includes" if len(users) == 1 else "include"
        raise ProjectError(
            f"{here} is an included pipeline of the project rooted at {root} ({listed} {verb} it), so builds"
            f" here use that root and keep their state there; to make it a project of its own, remove the"
            f" include from {listed}, then run 'pivotbuild init' here again"
        )
    marker.unlink()
    if root == here:  # the project it was part of is no longer above it
        click.echo(f"pivotbuild: {here} is a project root again ({marker} removed)", err=True)
        return 0
    click.echo(
        f"pivotbuild: {here} is now a project root (its {STATE_DIR}/ held its state as a pipeline of {root});"
        " its stages run again once, as their records name paths relative to the old root",
        err=True,
    )
    return 0
