"""Plain output for pipes and CI logs: `[k/N] stage` as each starts, its output
lines prefixed with its name, failures with their last lines, then the summary."""

from __future__ import annotations

from pivotbuild.events import (
    BuildFinished,
    BuildStarted,
    Decided,
    Event,
    Log,
    Message,
    StageFinished,
    StageStarted,
    Status,
    Watching,
)
from pivotbuild.report.summary import summary_line

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import TextIO


def watching_line(files: int) -> str:
    return f"watching {files} file{'' if files == 1 else 's'} for changes (Ctrl-C to stop)"


def summary(event: BuildFinished) -> str:
    return summary_line(
        event.ran,
        event.skipped,
        event.restored,
        event.failed,
        event.duration_s,
        blocked=event.blocked,
        cancelled=event.cancelled,
        interrupted=event.interrupted,
    )


def message_text(event: Message) -> str:
    """A message as every view prints it (to stderr): `pivotbuild: ...`, but
    a Pivotfile's located errors (level "located") as they are."""
    if event.level == "located":
        return event.text
    prefix = "warning: " if event.level == "warning" else ""
    return f"pivotbuild: {prefix}{event.text}"


def failure_lines(event: StageFinished) -> list[str]:
    lines = [f"pivotbuild: stage {event.stage} failed ({event.detail})"]
    if event.tail:
        lines.append(f"pivotbuild: last lines of {event.stage}:")
        lines.extend(f"    {line}" for line in event.tail)
    return lines


class PlainReporter:
    def __init__(
        self, out: TextIO, err: TextIO, *, quiet: bool = False, verbose: bool = False, explain: bool = False
    ) -> None:
        self.out = out
        self.err = err
        self.quiet = quiet
        self.verbose = verbose
        self.explain = explain
        # Shown only with --explain or -v: otherwise the engine need not
        # report each stage a build counted up to date (events.Reporter).
        self.wants_skipped = explain or verbose
        self._failures_seen: set[str] = set()
        self._watching: int | None = None  # the count last announced (watch mode)

    def _print(self, text: str, err: bool = False) -> None:
        stream = self.err if err else self.out
        stream.write(text + "\n")
        stream.flush()

    def handle(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            if event.attempt > 1:
                self._print(f"pivotbuild: {event.stage}: {event.reason}", err=True)
            elif not self.quiet:
                why = f" ({event.reason})" if self.explain or self.verbose else ""
                self._print(f"[{event.index}/{event.total}] {event.stage}{why}")
        elif isinstance(event, Log):
            if not self.quiet:
                self._print(f"{event.stage} | {event.line}")
        elif isinstance(event, StageFinished):
            self._finished(event)
        elif isinstance(event, Decided):
            if event.will_run:
                self._print(f"would run {event.stage}: {event.reason}")
            elif self.explain or self.verbose:
                self._print(f"up to date: {event.stage}")
        elif isinstance(event, Message):
            self._print(message_text(event), err=True)
        elif isinstance(event, BuildStarted):
            self._failures_seen.clear()  # (watch mode: one build after another)
        elif isinstance(event, BuildFinished):
            self._print(summary(event), err=True)
        elif isinstance(event, Watching) and event.files != self._watching and not self.quiet:
            self._watching = event.files
            self._print(f"pivotbuild: {watching_line(event.files)}", err=True)

    def _finished(self, event: StageFinished) -> None:
        if event.status is Status.FAILED:
            again = event.stage in self._failures_seen
            self._failures_seen.add(event.stage)
            lines = failure_lines(event) if not again else [f"pivotbuild: stage {event.stage} failed ({event.detail})"]
            if again and event.tail:
                lines += [f"    {line}" for line in event.tail]
            for line in lines:
                self._print(line, err=True)
        elif event.status is Status.BLOCKED and not self.quiet:
            self._print(f"pivotbuild: {event.stage} not run: {event.reason}", err=True)
        elif event.status is Status.SKIPPED and (self.explain or self.verbose):
            self._print(f"up to date: {event.stage}")
        elif event.status is Status.RAN and self.verbose:
            self._print(f"pivotbuild: {event.stage} done in {event.duration_s:.1f}s", err=True)

    def close(self) -> None:
        pass
