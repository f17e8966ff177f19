"""The front door of a plain build: answered before click is even imported.

The command line is parsed by the build command's own parser (buildargs.py,
the same declarations click's `repro` is made from).  If it is a plain build
the fast path takes, the build core's fast check (build/fastpath.py) reads the
compiled plan and the seal: a build that would run nothing prints the summary
line every build ends with and writes its history entry, having imported
neither the engine nor click; a build with work runs the engine with what was
read (cli/direct.py), and so does one the plan cannot answer (no plan yet, a
Pivotfile edited since, a target that is a pattern or a path), the engine
then loading the project itself.  For a command line the parser declines,
this returns None, and click runs it from where it started.
"""

from __future__ import annotations

import os
import sys
import time

from pivotbuild.build import fastpath
from pivotbuild.cli import buildargs

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pivotbuild.cli.residents import Residents


def try_fast(argv: Sequence[str], residents: Residents | None = None) -> int | None:
    """Exit status of a plain build run on the fast path, having printed what it
    prints; None (in the directory it started in) if click must run.
    `residents`: a build server's engines, kept between builds."""
    start = time.monotonic()
    args = buildargs.parse(argv)
    if args is None:
        return None
    if not args.directories:
        return _answer(list(argv), args, start, residents)
    try:
        home = os.open(".", os.O_RDONLY)  # to come back to for click, whose `-C` is relative to it
    except OSError:
        return None
    try:
        try:
            buildargs.enter(args.directories)
        except OSError:
            code = None  # click says why
        else:
            code = _answer(list(argv), args, start, residents)
        if code is None:
            os.fchdir(home)
        return code
    finally:
        os.close(home)


def _answer(argv: list[str], args: buildargs.BuildArgs, start: float, residents: Residents | None) -> int | None:
    kept = residents.seal if residents is not None else None
    checked = fastpath.check(os.getcwd(), args.file, args.overrides, args.targets, kept)
    if checked is None or not checked.noop:
        # A build with work, or one the plan cannot answer (no plan yet, a
        # Pivotfile edited since, a target that is a pattern or a path): the
        # engine, without click either way.
        from pivotbuild.cli.direct import build

        return build(argv, args, checked, residents)
    if args.values["question"]:
        return 0
    from pivotbuild.report.summary import as_displayed, summary_line
    from pivotbuild.state import history

    skipped = len(checked.closure)
    sys.stderr.write(as_displayed(summary_line(0, skipped, 0, 0, time.monotonic() - start)) + "\n")
    sys.stderr.flush()
    try:
        history.record_build(
            checked.state_dir,
            started=history.now_stamp(),
            duration_s=time.monotonic() - start,
            targets=list(args.targets),
            result="ok",
            counts=(0, skipped, 0),
            stages={},
        )
    except OSError as exc:  # as the build says it (build/run.py)
        sys.stderr.write(f"pivotbuild: warning: could not write the build history: {exc.strerror}\n")
    return 0
