"""The live terminal display: a progress bar, the stages running now with their
elapsed time, counts and an estimate, redrawn in place (rich), with each
stage's output printed above it.  When the build ends it collapses to the
summary line, the same one the plain output ends with."""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

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
from pivotbuild.report.plain import failure_lines, message_text, summary, watching_line

_SHOWN_RUNNING = 8


class LiveReporter:
    def __init__(self, out: TextIO, err: TextIO, *, quiet: bool = False, explain: bool = False) -> None:
        self.console = Console(file=out, highlight=False)
        self.err = Console(file=err, highlight=False)
        self.quiet = quiet
        self.explain = explain
        self.total = 0
        self.done = 0
        self.counts: dict[Status, int] = {}
        self.running: dict[str, tuple[float, float | None]] = {}  # stage -> (started, expected_s)
        self.ran_durations: list[float] = []
        self.jobs = 1
        self.started_at = time.monotonic()
        self.live: Live | None = None
        self._failed_once: set[str] = set()

    # -- events -------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, BuildStarted):
            self._stop()  # (watch mode: the line shown between builds)
            self.total = event.stages
            self.done = 0
            self.counts = {}
            self.running = {}
            self.ran_durations = []
            self._failed_once = set()
            self.jobs = max(event.jobs, 1)
            self.started_at = time.monotonic()
            self.live = Live(self, console=self.console, refresh_per_second=8, transient=True)
            self.live.start()
        elif isinstance(event, Watching):
            self._stop()
            self.live = Live(_waiting(event), console=self.console, refresh_per_second=1, transient=True)
            self.live.start()
        elif isinstance(event, StageStarted):
            if event.attempt == 1:
                self.running[event.stage] = (time.monotonic(), event.expected_s)
                if self.explain:
                    self.console.print(Text(f"{event.stage}: {event.reason}", style="dim"))
            else:
                self._print_err(f"pivotbuild: {event.stage}: {event.reason}")
        elif isinstance(event, Log):
            if not self.quiet:
                line = Text(f"{event.stage} | ", style="dim")
                line.append(event.line)
                self.console.print(line)
        elif isinstance(event, StageFinished):
            self._finished(event)
        elif isinstance(event, Decided):
            text = f"would run {event.stage}: {event.reason}" if event.will_run else f"up to date: {event.stage}"
            self.console.print(text)
        elif isinstance(event, Message):
            self._print_err(message_text(event))
        elif isinstance(event, BuildFinished):
            self._stop()
            self._print_err(summary(event), style="bold red" if event.failed else "bold")

    def _finished(self, event: StageFinished) -> None:
        if event.stage in self._failed_once:
            return  # the end-of-build repeat; the live view already showed it
        first_time = event.stage in self.running or event.status is not Status.FAILED
        self.running.pop(event.stage, None)
        self.done += 1
        self.counts[event.status] = self.counts.get(event.status, 0) + 1
        if event.status is Status.RAN:
            self.ran_durations.append(event.duration_s)
        if event.status is Status.FAILED and first_time:
            self._failed_once.add(event.stage)
            for line in failure_lines(event):
                self._print_err(line, style="red")
        elif event.status is Status.BLOCKED and not self.quiet:
            self._print_err(f"pivotbuild: {event.stage} not run: {event.reason}", style="yellow")
        elif event.status is Status.SKIPPED and self.explain:
            self.console.print(Text(f"up to date: {event.stage}", style="dim"))

    def _print_err(self, text: str, style: str = "") -> None:
        if self.live is not None:
            self.live.console.print(Text(text, style=style))  # above the live area
        else:
            self.err.print(Text(text, style=style))

    def _stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def close(self) -> None:
        self._stop()

    # -- drawing --------------------------------------------------------------------

    def __rich__(self) -> RenderableType:
        now = time.monotonic()
        bar = ProgressBar(total=max(self.total, 1), completed=self.done, width=40)
        ran = self.counts.get(Status.RAN, 0)
        skipped = self.counts.get(Status.SKIPPED, 0)
        failed = self.counts.get(Status.FAILED, 0)
        head = Table.grid(padding=(0, 1))
        status = f"{self.done}/{self.total}  {ran} ran, {skipped} up to date"
        if failed:
            status += f", {failed} failed"
        status += f"  {_seconds(now - self.started_at)}"
        eta = self._estimate(now)
        if eta is not None:
            status += f"  ~{eta:.0f}s left"
        head.add_row(bar, Text(status))
        rows: list[RenderableType] = [head]
        for stage, (started, expected) in list(self.running.items())[:_SHOWN_RUNNING]:
            took = _seconds(now - started) + (f" / ~{_seconds(expected)}" if expected else "")
            rows.append(Text(f"  {stage}  ", style="bold").append(took, style="dim"))
        if len(self.running) > _SHOWN_RUNNING:
            rows.append(Text(f"  ... and {len(self.running) - _SHOWN_RUNNING} more", style="dim"))
        return Group(*rows)

    def _estimate(self, now: float) -> float | None:
        """Seconds left: what the running stages still need, plus the stages not
        started yet at the average run time so far, spread over the job slots."""
        known = [e for _, e in self.running.values() if e] + self.ran_durations
        if not known:
            return None
        average = sum(known) / len(known)
        running_left = sum(max((e or average) - (now - s), 0.0) for s, e in self.running.values())
        waiting = max(self.total - self.done - len(self.running), 0)
        return (running_left + waiting * average) / self.jobs


def _waiting(event: Watching) -> Text:
    """The line watch mode shows between builds."""
    text = Text(watching_line(event.files), style="bold")
    last = event.last
    if last is not None:
        when = time.strftime("%H:%M:%S", time.localtime(event.at))
        text.append(f"; last build {when}, {last.ran} ran", style="dim")
        if last.failed:
            text.append(f", {last.failed} failed", style="red")
    return text


def _seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{s // 60:.0f}m{s % 60:02.0f}s"
