"""What watch mode shows of its builds: every event to each of several
reporters (`Tee`: the user's view and the agent server's event log), and of
the builds a change starts, only those in which something happened
(`QuietBuilds`).

A change a build itself made (an output that a later stage reads, seen by
the watcher once it is written) or a file saved with the same contents
starts a build in which every stage is up to date.  Such a build is run,
since only deciding the stages tells, but not shown: no summary line, no
events, as if the change had not been seen.
"""

from __future__ import annotations

from pivotbuild.events import (
    BuildFinished,
    BuildStarted,
    Event,
    Log,
    Message,
    Reporter,
    StageFinished,
    StageStarted,
    Status,
    Watching,
)


class Tee:
    """Every event to each of `reporters`, in order."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters
        self.wants_states = any(getattr(r, "wants_states", False) for r in reporters)

    def handle(self, event: Event) -> None:
        for reporter in self.reporters:
            reporter.handle(event)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


class QuietBuilds:
    """Passes events on to `inner`, but holds back each build's until
    something happens in it (a stage starts, is restored, fails or is
    blocked; a message; an interrupt), and drops them if nothing does.  The
    next build is shown whatever happens after `show_next()` (the first
    build, one an agent asked for)."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.wants_states = getattr(inner, "wants_states", False)
        # Was anything shown (a build, a message) since the loop last said it
        # was watching?  The loop resets it when it says so again; a build not
        # shown leaves it as it was.
        self.shown = False
        self._show_next = True
        self._held: list[Event] | None = None

    def show_next(self) -> None:
        self._show_next = True

    def handle(self, event: Event) -> None:
        if isinstance(event, BuildStarted):
            show, self._show_next = self._show_next, False
            if not show:
                self._held = [event]
                return
        held = self._held
        if held is not None:
            if not _notable(event):
                if isinstance(event, BuildFinished):
                    self._held = None  # nothing happened: the build is not shown at all
                else:
                    held.append(event)
                return
            self._held = None
            for earlier in held:
                self.inner.handle(earlier)
        if not isinstance(event, Watching):
            self.shown = True
        self.inner.handle(event)

    def close(self) -> None:
        self.inner.close()


def _notable(event: Event) -> bool:
    if isinstance(event, (StageStarted, Log, Message)):
        return True
    if isinstance(event, StageFinished):
        return event.status is not Status.SKIPPED
    if isinstance(event, BuildFinished):
        return event.interrupted or event.cancelled > 0
    return False
