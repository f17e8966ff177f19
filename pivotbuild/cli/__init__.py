"""The `pivotbuild` command: flags in, calls into the core, exit codes out.

`main` first offers the invocation to the no-op fast path (quick.py), which
imports almost nothing; only if that cannot answer is the click command line
imported and run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (never raises)."""
    args = list(sys.argv[1:] if argv is None else argv)
    from pivotbuild.quick import try_noop

    code = try_noop(args)
    if code is not None:
        return code
    from pivotbuild.cli.main import main as full

    return full(args)


__all__ = ["main"]
