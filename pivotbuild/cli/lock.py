"""`pivotbuild lock show [PATH]`: a lockfile as stable, sorted text (or JSON);
`pivotbuild lock merge BASE OURS THEIRS`: git's merge driver for lockfiles.

`pivotbuild init` in a git repository sets both up (cli/gitsetup.py): git
diffs lockfiles through `lock show` and merges them through `lock merge`.
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


class UnreadableLockfile(PivotError):
    """A lockfile the merge driver cannot read: git keeps the conflict."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def lock() -> None:
    """Inspect and merge lockfiles."""


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


@lock.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("ours", type=click.Path(path_type=Path))
@click.argument("theirs", type=click.Path(path_type=Path))
def merge(base: Path, ours: Path, theirs: Path) -> int:
    """Merge lockfiles THEIRS and BASE into OURS (git's merge driver).

    A stage's record changed on one side only is taken from that side; a
    stage changed differently on both sides is dropped, so it runs again
    on the next build (each is named on stderr).  Exit 0, or 2 (git then
    reports a conflict) if a file cannot be read as a lockfile.

    \b
    `pivotbuild init` sets it up; by hand:
        echo 'Pivotfile.lock merge=pivotlock' >> .gitattributes
        git config merge.pivotlock.driver "pivotbuild lock merge %O %A %B"
    """
    from pivotbuild.state.lockmerge import merge as merge_locks

    merged = merge_locks(_read_for_merge(base), _read_for_merge(ours), _read_for_merge(theirs))
    lockfile.write(ours, merged.data)
    for name in merged.dropped:
        click.echo(
            f"pivotbuild: lock merge: stage {name} changed on both sides; its record is dropped, so it runs"
            " again on the next build",
            err=True,
        )
    return 0


def _read_for_merge(path: Path) -> LockData:
    """A lockfile git hands the driver; an empty file is an empty lockfile (git
    gives one for a side where the file does not exist)."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise UnreadableLockfile(
            f"lock merge: {path}: cannot be read ({exc.strerror}); resolve the merge by hand"
        ) from exc
    if not blob:
        return LockData()
    try:
        return lockfile.decode(blob)
    except lockfile.LockfileError as exc:
        raise UnreadableLockfile(
            f"lock merge: {path}: not a readable lockfile ({exc}); resolve the merge by hand, e.g."
            " 'git checkout --ours Pivotfile.lock' (stages whose records are missing run again)"
        ) from exc


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
