"""`pivotbuild -w [--serve]`: watch mode (watch/loop.py) with the reporter
the options ask for, and with `--serve` the agent server beside it
(rpc/server.py), listening before the first build starts."""

from __future__ import annotations

import contextlib

from pivotbuild.build.options import BuildOptions
from pivotbuild.cli.running import make_reporter, terminate_as_interrupt
from pivotbuild.events import Reporter

DEBOUNCE_MS = 50


def watch(options: BuildOptions) -> int:
    from pivotbuild.paths import AGENT_SOCKET
    from pivotbuild.watch.changes import Watchfiles
    from pivotbuild.watch.eventlog import EventLog
    from pivotbuild.watch.loop import WatchLoop

    reporter = make_reporter(options)
    log = EventLog() if options.serve else None
    also: list[Reporter] = [log] if log is not None else []
    every: list[Reporter] = [log.every] if log is not None else []
    debounce = DEBOUNCE_MS if options.debounce is None else options.debounce
    loop = WatchLoop(reporter, options, Watchfiles(debounce), restart=options.restart, also=also, every=every)
    with terminate_as_interrupt(), contextlib.ExitStack() as stack:
        stack.callback(reporter.close)
        loop.start()
        if log is not None:
            from pivotbuild.rpc.server import AgentServer
            from pivotbuild.watch.agent import WatchAgent

            project, _ = loop.engine.current()
            stack.enter_context(AgentServer(project.root / AGENT_SOCKET, WatchAgent(loop, log)))
        return loop.run()
