"""What the agent server tells its clients about builds: the `--json` events
of every build shown, numbered so that a client can ask for those after the
last it saw (`events_since`), and each stage's latest state and reason.

A reporter like any other (watch/reporting.py puts it beside the user's).
It only appends and updates under a lock: a client reading it never holds
up a build, and a build never waits for a client.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from pivotbuild.events import BuildFinished, BuildStarted, Event, StageFinished, StageStarted, StageState, Status
from pivotbuild.report.jsonl import public

# Events kept for `events_since` (the oldest go first): a client that falls
# further behind than this is answered from the oldest still kept.
KEPT = 100_000


class EventLog:
    wants_states = True  # the agent's `stages` shows pending, ready, running...

    def __init__(self, kept: int = KEPT) -> None:
        self._lock = threading.Lock()
        self._events: deque[dict[str, Any]] = deque(maxlen=kept)
        self._next = 0  # the number the next event gets (cursor N: the events numbered N and after)
        self._states: dict[str, tuple[str, str | None]] = {}  # stage -> (state, reason)
        self._counts: dict[str, int] = {}
        self._finished: set[str] = set()  # the stages of this build that have finished
        self._now: dict[str, tuple[str, str | None]] = {}  # the running build's decisions, shown or not
        self.building = False
        self.every = _EveryBuild(self)  # the reporter to hand every build's events (see WatchLoop's `every`)

    # -- the reporter ----------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, BuildStarted):
                self.building = True
                self._finished.clear()
                self._counts = {"stages": event.stages, **dict.fromkeys((s.value for s in Status), 0)}
            elif isinstance(event, StageState):
                self._states[event.stage] = (event.state.value, event.reason or None)
            elif isinstance(event, StageStarted):
                self._states[event.stage] = ("running", event.reason or None)
            elif isinstance(event, StageFinished):
                if event.stage in self._finished:
                    return  # the end-of-build repeat of a failure is for humans
                self._finished.add(event.stage)
                self._states[event.stage] = (event.status.value, event.reason or None)
                self._counts[event.status.value] = self._counts.get(event.status.value, 0) + 1
            elif isinstance(event, BuildFinished):
                self.building = False
            if public(event):
                self._events.append(event.to_json())
                self._next += 1

    def close(self) -> None:
        pass

    # -- what the agent asks ---------------------------------------------------------------

    def since(self, cursor: int) -> dict[str, Any]:
        """The events numbered `cursor` and after, and the cursor to ask with next."""
        with self._lock:
            first = self._next - len(self._events)
            start = max(cursor, first) - first
            events = list(self._events)[start:] if start < len(self._events) else []
            return {"events": events, "cursor": self._next}

    def state(self, stage: str) -> tuple[str, str | None]:
        """A stage's latest state and its reason (`unknown` before any build decided it)."""
        with self._lock:
            return self._states.get(stage, ("unknown", None))

    def decided_now(self, stage: str) -> tuple[str, str | None] | None:
        """What the running (or last) build, shown or not, has decided of a
        stage so far: its state and reason; None if it has not reached it."""
        with self._lock:
            return self._now.get(stage)

    def counts(self) -> dict[str, int]:
        """How many stages of the running (or last) build ended each way."""
        with self._lock:
            return dict(self._counts)


class _EveryBuild:
    """The event log's view of every build, shown or not (watch/reporting.py
    holds back the events of builds in which nothing happens): what the
    running build has decided, for `explain`."""

    wants_states = True

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def handle(self, event: Event) -> None:
        log = self.log
        with log._lock:
            if isinstance(event, BuildStarted):
                log._now = {}
            elif isinstance(event, StageState):
                log._now[event.stage] = (event.state.value, event.reason or None)
            elif isinstance(event, StageStarted):
                log._now[event.stage] = ("running", event.reason or None)
            elif isinstance(event, StageFinished):
                log._now[event.stage] = (event.status.value, event.reason or None)

    def close(self) -> None:
        pass
