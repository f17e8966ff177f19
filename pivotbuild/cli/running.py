"""What running a build needs from the command line besides click: the
reporter its options ask for, and SIGTERM treated as Ctrl-C.  (No click here:
cli/direct.py runs plain builds without importing it.)"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

from pivotbuild.build.options import BuildOptions
from pivotbuild.events import Reporter
from pivotbuild.report.summary import live_display


def make_reporter(options: BuildOptions) -> Reporter:
    if options.json:
        from pivotbuild.report.jsonl import JsonReporter

        return JsonReporter(sys.stdout, sys.stderr)
    if live_display() and not options.verbose:
        from pivotbuild.report.live import LiveReporter

        return LiveReporter(sys.stdout, sys.stderr, quiet=options.quiet, explain=options.explain)
    from pivotbuild.report.plain import PlainReporter

    return PlainReporter(sys.stdout, sys.stderr, quiet=options.quiet, verbose=options.verbose, explain=options.explain)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a build the way Ctrl-C does: stages killed, results kept, exit 130."""

    # Python's own SIGINT handler (it raises KeyboardInterrupt): the build loop
    # knows it, and defers it while it starts or ends a stage (build/interrupts.py).
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
