"""`pivotbuild history`: recent builds of this project."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pivotbuild.cli.common import project_options
from pivotbuild.paths import STATE_DIR, find_root
from pivotbuild.state import history as store


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many builds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per build.")
@click.option("-v", "--verbose", is_flag=True, help="List the stages each build ran.")
@project_options
def history(limit: int, as_json: bool, verbose: bool) -> int:
    """Recent builds: when, what ran, how long, and the result (newest last)."""
    past = store.load(find_root(Path.cwd()) / STATE_DIR, limit)
    entries = past.entries
    if past.skipped:
        lines = "line" if past.skipped == 1 else "lines"
        click.echo(
            f"pivotbuild: warning: {STATE_DIR}/{store.HISTORY}: skipped {past.skipped} damaged {lines}",
            err=True,
        )
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry, sort_keys=True))
        return 0
    if not entries:
        click.echo("pivotbuild: no builds recorded yet", err=True)
        return 0
    for e in entries:
        targets = " ".join(e.get("targets") or []) or "(default)"
        counts = f"{e.get('ran', 0)} ran, {e.get('skipped', 0)} up to date, {e.get('failed', 0)} failed"
        took = f"{e.get('duration_s', 0):.1f}s"
        click.echo(f"{e.get('started', '?')}  {e.get('result', '?'):<11}  {counts}  {took}  {targets}")
        if verbose:
            for name, info in sorted((e.get("stages") or {}).items()):
                if isinstance(info, dict):
                    ran = info.get("duration_s")
                    shown = f"{ran:.1f}s" if isinstance(ran, (int, float)) else "?"
                    click.echo(f"    {name}  {info.get('status')}  {shown}")
    return 0
