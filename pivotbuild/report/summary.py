"""The build's last line, the same from every view: the plain and live
reporters print it for `BuildFinished`, and the no-op fast path (cli/fast.py)
prints it without the engine or any reporter.  (Cheap to import: no rich, no
events.)"""

from __future__ import annotations

import os
import sys


def summary_line(
    ran: int,
    skipped: int,
    restored: int,
    failed: int,
    duration_s: float,
    *,
    blocked: int = 0,
    cancelled: int = 0,
    interrupted: bool = False,
) -> str:
    """`pivotbuild: 3 ran, 1 up to date, 0 restored, 0 failed in 1.2s`, and the
    blocked and not-run counts when there are any."""
    parts = [f"{ran} ran", f"{skipped} up to date", f"{restored} restored", f"{failed} failed"]
    if blocked:
        parts.append(f"{blocked} blocked")
    if cancelled:
        parts.append(f"{cancelled} not run")
    head = "interrupted: " if interrupted else ""
    return f"pivotbuild: {head}{', '.join(parts)} in {duration_s:.1f}s"


def live_display() -> bool:
    """Whether a build's output is the live display (report/live.py) rather
    than plain lines, unless the options ask for plain ones (-v, --json)."""
    return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


def as_displayed(line: str) -> str:
    """A successful build's summary line as the output in use writes it to
    stderr: bold, as rich writes it, on the live display with a colour
    terminal; else plain."""
    if live_display() and sys.stderr.isatty() and "NO_COLOR" not in os.environ:
        return f"\x1b[1m{line}\x1b[0m"
    return line
