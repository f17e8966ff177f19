"""The click command line, run; and the one place errors become messages and exit codes.

(Not `cli/main.py`: importing a submodule named `main` would replace the
package's own `main`, the entry point, with the module.)"""

from __future__ import annotations

import datetime
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

from pivotbuild.errors import EXIT_BUG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, PivotError, PivotfileError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (never raises)."""
    from pivotbuild.cli.app import cli

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=args, prog_name="pivotbuild", standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        return exit_status(exc, args)
    except SystemExit as exc:  # (click's own, even so, where its output was closed under it: EPIPE)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else EXIT_FAILED
    return int(result or 0)


def out_of_command(exc: Exception | KeyboardInterrupt) -> Exception | KeyboardInterrupt:
    """What click's command makes of an exception out of it (`Command.main`):
    an interrupt or an EOFError becomes an `Abort`, after an empty line (the
    terminal's ^C ends the one above).  For the click-free build path
    (cli/direct.py), so that both doors say the same."""
    if isinstance(exc, (KeyboardInterrupt, EOFError)):
        click.echo(err=True)
        return click.exceptions.Abort()
    return exc


def exit_status(exc: Exception | KeyboardInterrupt, args: list[str]) -> int:
    """Say what an exception out of a command means, and return its exit status.
    (Also used by the click-free build path, cli/direct.py.)"""
    if isinstance(exc, click.exceptions.Exit):
        return int(exc.exit_code)
    if isinstance(exc, click.ClickException):
        return _usage_error(exc, args)
    if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)):
        click.echo("pivotbuild: interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(exc, PivotError):
        report_error(exc)
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        return EXIT_FAILED
    return _crash(args, exc)  # a bug: say so, keep the traceback for the report


def report_error(exc: PivotError) -> None:
    if isinstance(exc, PivotfileError):
        click.echo(exc.render(), err=True)
    click.echo(f"pivotbuild: {exc.message}", err=True)


def _usage_error(exc: click.ClickException, args: list[str]) -> int:
    message = exc.format_message()
    click.echo(f"pivotbuild: {message}", err=True)
    if isinstance(exc, click.UsageError):
        command = exc.ctx.command_path if exc.ctx is not None else "pivotbuild"
        if command.endswith(" repro") and "repro" not in args:
            command = "pivotbuild"  # the user typed a bare build, not `repro`
        click.echo(f"Try '{command} --help' for help.", err=True)
    return EXIT_USAGE


def _crash(args: list[str], exc: BaseException) -> int:
    text = "".join(traceback.format_exception(exc))
    log = _crash_log_path()
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"--- {stamp} pivotbuild {' '.join(args)}\n{text}\n")
        where = f"the traceback is in {log}"
    except OSError:
        where = f"the traceback follows:\n{text}"
    last = text.strip().splitlines()[-1]
    click.echo(f"pivotbuild: internal error (a bug in pivotbuild): {last}", err=True)
    click.echo(f"pivotbuild: {where}; please report it", err=True)
    return EXIT_BUG


def _crash_log_path() -> Path:
    from pivotbuild.paths import STATE_DIR, find_root

    try:
        root = find_root(Path.cwd())
    except OSError:
        root = Path.cwd()
    return root / STATE_DIR / "crash.log"
