"""`--json`: the events of CLI.md, one JSON object per line on stdout, nothing else."""

from __future__ import annotations

import json
from typing import TextIO

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


class JsonReporter:
    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._finished: set[str] = set()

    def handle(self, event: Event) -> None:
        if isinstance(event, Message):
            self.err.write(message_text(event) + "\n")
            return
        if isinstance(event, BuildStarted):
            self._finished.clear()  # (watch mode: one build after another)
        if isinstance(event, StageFinished):
            if event.stage in self._finished:
                return  # the end-of-build repeat of a failure is for humans
            self._finished.add(event.stage)
        if public(event):
            self.out.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
            self.out.flush()

    def close(self) -> None:
        pass
