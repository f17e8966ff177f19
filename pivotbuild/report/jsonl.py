"""`--json`: the events of CLI.md, one JSON object per line on stdout, nothing else."""

from __future__ import annotations

import json
from typing import Any, TextIO

from pivotbuild.events import (
    BuildFinished,
    BuildStarted,
    Decided,
    Event,
    Log,
    Message,
    StageFinished,
    StageStarted,
    Watching,
)
from pivotbuild.report.plain import message_text

# The events CLI.md promises (and watch mode's `watching`); the others (stage
# states, retries) are internal.
PUBLIC = (BuildStarted, StageStarted, Log, StageFinished, Decided, BuildFinished, Watching)


def public(event: Event) -> bool:
    """Is `event` one of `--json`'s (CLI.md, Events)?  Not a retry's start."""
    if isinstance(event, StageStarted):
        return event.attempt == 1
    return isinstance(event, PUBLIC)


class JsonEvents:
    """The `--json` view of a stream of events, event by event: each one's
    JSON object, or None for one it does not show (an internal event, the
    end-of-build repeat of a failure, which is for humans).  The Python API's
    `on_event` receives the same objects."""

    def __init__(self) -> None:
        self._finished: set[str] = set()

    def convert(self, event: Event) -> dict[str, Any] | None:
        if isinstance(event, BuildStarted):
            self._finished.clear()  # (watch mode: one build after another)
        if isinstance(event, StageFinished):
            if event.stage in self._finished:
                return None
            self._finished.add(event.stage)
        return event.to_json() if public(event) else None


class JsonReporter:
    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._events = JsonEvents()

    def handle(self, event: Event) -> None:
        if isinstance(event, Message):
            self.err.write(message_text(event) + "\n")
            return
        data = self._events.convert(event)
        if data is not None:
            self.out.write(json.dumps(data, ensure_ascii=False) + "\n")
            self.out.flush()

    def close(self) -> None:
        pass
