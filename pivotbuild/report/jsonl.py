"""`--json`: the events of CLI.md, one JSON object per line on stdout, nothing else."""

from __future__ import annotations

import json
from typing import TextIO

from pivotbuild.events import BuildFinished, BuildStarted, Decided, Event, Log, Message, StageFinished, StageStarted

# The events CLI.md promises; the others (stage states, retries) are internal.
_PUBLIC = (BuildStarted, StageStarted, Log, StageFinished, Decided, BuildFinished)


class JsonReporter:
    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._finished: set[str] = set()

    def handle(self, event: Event) -> None:
        if isinstance(event, Message):
            self.err.write(f"pivotbuild: {event.text}\n")
            return
        if isinstance(event, StageStarted) and event.attempt > 1:
            return
        if isinstance(event, StageFinished):
            if event.stage in self._finished:
                return  # the end-of-build repeat of a failure is for humans
            self._finished.add(event.stage)
        if isinstance(event, _PUBLIC):
            self.out.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
            self.out.flush()

    def close(self) -> None:
        pass
