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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pivotbuild.build.makejobs import MakeJobServer


def make_reporter(options: BuildOptions) -> Reporter:
    if options.json:
        from pivotbuild.report.jsonl import JsonReporter

        return JsonReporter(sys.stdout, sys.stderr)
    if live_display() and not options.verbose:
        from pivotbuild.report.live import LiveReporter

        return LiveReporter(sys.stdout, sys.stderr, quiet=options.quiet, explain=options.explain)
    from pivotbuild.report.plain import PlainReporter

    return PlainReporter(sys.stdout, sys.stderr, quiet=options.quiet, verbose=options.verbose, explain=options.explain)


def leave_if_starting() -> None:
    """A build in a process of its own that starts a server as it ends (the
    first in a while: cli.run) leaves the copies it keeps for that server
    to send (cache/copying.py, `Left`)."""
    from pivotbuild.cli import client

    if client.STARTS:
        from pivotbuild.cache import copying

        copying.leave()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM, and SIGHUP (the terminal closed) unless it is ignored (`nohup`),
    stop a build the way Ctrl-C does: stages killed, results kept, the job
    pool's fifo removed, exit 130."""

    # Python's own SIGINT handler (it raises KeyboardInterrupt): the build loop
    # knows it, and defers it while it starts or ends a stage (build/interrupts.py).
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, signal.default_int_handler)}
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.default_int_handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def makes_pool(options: BuildOptions) -> Iterator[MakeJobServer | None]:
    """`make_jobserver`, and every token read given back to make once the
    build is over, however it ended."""
    client = make_jobserver(options)
    try:
        yield client
    finally:
        if client is not None:
            client.close()


def make_jobserver(options: BuildOptions) -> MakeJobServer | None:
    """Make's jobserver, if pivotbuild runs under one (MAKEFLAGS) and has no
    `-j` of its own; else None (our own pool).  One that cannot be used is
    said once, and the build runs with its own `-j`."""
    import os

    flags_text = os.environ.get("MAKEFLAGS", "")
    if options.jobs is not None or "jobserver-" not in flags_text:
        return None
    from pivotbuild.build.makejobs import connect, parse_makeflags

    flags = parse_makeflags(flags_text)
    if flags.fds is None and flags.fifo is None:
        return None
    client = connect(flags)
    if isinstance(client, str):
        advice = "" if flags.fifo else ": mark the recipe with '+' (or use $(MAKE)-style recipes) so make passes it"
        sys.stderr.write(
            f"pivotbuild: warning: make's jobserver (--jobserver-auth={flags.auth} in MAKEFLAGS) cannot be used"
            f" ({client}){advice}; running with pivotbuild's own -j meanwhile\n"
        )
        return None
    return client
