"""`pivotbuild fmt [--check] [FILE]...`."""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from pivotbuild.cli.common import pivotfile_arg, project_options
from pivotbuild.errors import Diagnostic, PivotfileError, ProjectError
from pivotbuild.paths import PIVOTFILE
from pivotbuild.pivotfile.fmt import format_module
from pivotbuild.pivotfile.parser import parse
from pivotbuild.state.files import write_atomic


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a file is not formatted (and show the diff).")
@project_options
@click.pass_context
def fmt(ctx: click.Context, files: tuple[Path, ...], check: bool) -> int:
    """Rewrite Pivotfiles in canonical layout (comments are kept).

    Formats ./Pivotfile (or the -f file) unless FILES are given.  Formatting
    never changes what a Pivotfile means.
    """
    targets = list(files) or [pivotfile_arg(ctx) or Path(PIVOTFILE)]
    errors: list[Diagnostic] = []
    changed: list[Path] = []
    for path in targets:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProjectError(f"{path}: cannot read: {exc.strerror}") from exc
        try:
            new = format_module(parse(text, str(path)))
        except PivotfileError as exc:
            errors.extend(exc.diagnostics)
            continue
        if new == text:
            continue
        changed.append(path)
        if check:
            diff = difflib.unified_diff(text.splitlines(True), new.splitlines(True), f"{path}", f"{path} (formatted)")
            click.echo("".join(diff), nl=False)
        else:
            write_atomic(path, new.encode("utf-8"))
            click.echo(f"pivotbuild: formatted {path}", err=True)
    if errors:
        raise PivotfileError(errors)
    if check and changed:
        click.echo(f"pivotbuild: {len(changed)} file(s) would be reformatted; run 'pivotbuild fmt'", err=True)
        return 1
    return 0
