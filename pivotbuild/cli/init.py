"""`pivotbuild init`: create `.pivot/` at the project root."""

from __future__ import annotations

from pathlib import Path

import click

from pivotbuild.cli.common import project_options
from pivotbuild.state_files import ensure_state_dir


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@project_options
def init() -> int:
    """Make the current directory a project root: create `.pivot/` with its own
    `.gitignore` (everything in it is ignored except config.toml)."""
    here = Path.cwd()
    for parent in [here, *here.parents]:
        if (parent / ".pivot").is_dir():
            click.echo(f"pivotbuild: {parent} is already a project root ({parent / '.pivot'} exists)", err=True)
            return 0
    ensure_state_dir(here)
    click.echo(
        f"pivotbuild: created {here / '.pivot'}; commit .pivot/.gitignore (and later .pivot/config.toml)", err=True
    )
    return 0
