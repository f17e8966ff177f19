"""`pivotbuild lock show [PATH]`: a lockfile as stable, sorted text (or JSON).

Git can diff lockfiles through it: in `.gitattributes` put
`Pivotfile.lock diff=pivotlock`, then run
`git config diff.pivotlock.textconv "pivotbuild lock show"`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pivotbuild.cli.common import pivotfile_arg
from pivotbuild.errors import PivotError
from pivotbuild.paths import LOCKFILE
from pivotbuild.state import lockfile
from pivotbuild.state.records import FileRecord, LockData


class BadLockfile(PivotError):
    exit_code = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def lock() -> None:
    """Inspect lockfiles."""


@lock.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the lockfile as JSON.")
@click.pass_context
def show(ctx: click.Context, path: Path | None, as_json: bool) -> int:
    """Print a lockfile (default: the Pivotfile's) as stable, sorted text.

    \b
    To see lockfile changes in `git diff`:
        echo 'Pivotfile.lock diff=pivotlock' >> .gitattributes
        git config diff.pivotlock.textconv "pivotbuild lock show"
    """
    if path is None:
        pivotfile = pivotfile_arg(ctx)
        path = (pivotfile.parent if pivotfile else Path()) / LOCKFILE
    if not path.exists():
        raise BadLockfile(f"{path}: no such lockfile (it is written by the first build)")
    try:
        data = lockfile.read(path)
    except lockfile.LockfileError as exc:
        raise BadLockfile(f"{path}: {exc}") from exc
    click.echo(json.dumps(to_json(data), indent=2, sort_keys=True) if as_json else to_text(data))
    return 0


def to_json(data: LockData) -> dict[str, Any]:
    def rec(r: FileRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"path": r.path, "kind": r.kind, "hash": r.hash}
        if r.matches:
            out["matches"] = [rec(m) for m in r.matches]
        if r.executable:
            out["exec"] = True
        return out

    return {
        "stages": {
            s.name: {
                "fingerprint": s.fingerprint,
                "command": s.command,
                "deps": [rec(d) for d in s.deps],
                "outs": [rec(o) for o in s.outs],
                "params": {f"{p.file}:{p.key}": json.loads(p.value_json) for p in s.params},
            }
            for s in data.stages
        }
    }


def to_text(data: LockData) -> str:
    lines: list[str] = []
    for s in data.stages:
        if lines:
            lines.append("")
        lines.append(f"stage {s.name}")
        lines.append(f"  fingerprint {s.fingerprint}")
        command = s.command.split("\n")
        lines.append(f"  command {command[0]}")
        lines.extend(f"          {c}" for c in command[1:])
        for p in sorted(s.params, key=lambda p: (p.file, p.key)):
            lines.append(f"  param {p.file}:{p.key} = {p.value_json}")
        for d in sorted(s.deps, key=lambda d: d.path):
            lines.append(f"  dep {d.path} {d.kind} {d.hash}")
            lines.extend(f"    match {m.path} {m.hash}" for m in d.matches)
        for o in sorted(s.outs, key=lambda o: o.path):
            lines.append(f"  out {o.path} {o.kind} {o.hash}" + (" exec" if o.executable else ""))
    return "\n".join(lines)
