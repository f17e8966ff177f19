"""The Python API: a project loaded, looked at and built from Python (docs/api.md).

`Project` drives one `Engine` (build/engine.py), as the command line does, so
a build from here decides, runs and records exactly as `pivotbuild` would.
The API never prints and never exits: what the engine says goes to
`on_event` as the `--json` objects (report/jsonl.py converts them for both)
and onto the result.  Errors are the command line's: `PivotError` and its
subclasses, whose `str()` is the text `pivotbuild` prints for them (a
Pivotfile's located errors, then the summary line) without its
`pivotbuild: ` prefix.  A stage failing is not an error: `BuildResult.ok`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pivotbuild.build.engine import Engine
from pivotbuild.build.options import BuildOptions
from pivotbuild.errors import EXIT_INTERRUPTED, EXIT_OK, PivotError, PivotfileError, TargetError
from pivotbuild.events import Event, Message, StageFinished, Status
from pivotbuild.report.jsonl import JsonEvents
from pivotbuild.report.plain import message_text
from pivotbuild.structs import struct

# What `on_event` is called with: one `--json` object (CLI.md, Events), or a
# `{"event": "message", "level": ..., "text": ...}` for a line the CLI prints on stderr.
EventHandler = Callable[[dict[str, Any]], object]
Targets = str | Iterable[str] | None


@struct(frozen=True, slots=True)
class StageInfo:
    """One stage, as `pivotbuild list` shows it.  `name` is as targets name it
    (`train`, `train@small`, `sub:train`); `deps` and `outs` are the paths
    (and glob patterns) its Pivotfile lists; `desc` is "" if it has none."""

    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    desc: str


@struct(frozen=True, slots=True)
class BuildResult:
    """How a build ended.  `ok`: no stage failed.  Each stage of the build
    is named in one of `ran`, `skipped` (up to date), `restored` (from the
    cache), `failed`, `blocked` (an upstream stage failed) or `cancelled`
    (not started: a stage failed and `keep_going` was off), in the order they
    ended.  `messages`: the build's warnings and notes, as the CLI prints
    them on stderr without `pivotbuild: ` (also sent to `on_event`)."""

    ok: bool
    ran: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    restored: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()


class Project:
    """A pivotbuild project, loaded.  Make one with `Project.load`.

    Every call sees the Pivotfiles as they are when it is made (they are
    loaded again if one changed).  One call at a time per Project."""

    root: Path  # the project root (the directory holding `.pivot/`)
    messages: list[str]  # warnings from loading, `status` and `explain` (a build's are on its result)

    def __init__(self, engine: Engine, relay: _Relay, options: BuildOptions) -> None:
        """Internal: use `Project.load`."""
        self._engine = engine
        self._relay = relay
        self._options = options
        self._error: PivotError | None = None  # the Pivotfiles' error since they last changed
        self.messages = []
        self.root = engine.current()[0].root

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] = ".",
        *,
        file: str | os.PathLike[str] | None = None,
        all_pipelines: bool = False,
    ) -> Project:
        """Load the project as `pivotbuild -C PATH [-f FILE] [--all]` does: the
        Pivotfile in `path` (or `file`, relative to `path`), the root found
        above it.  Targets are named from `path`.  Raises PivotError (no
        Pivotfile), PivotfileError (its located errors, as `pivotbuild check`
        prints them) or TargetError (a bad `default`)."""
        relay = _Relay()
        options = BuildOptions(
            Path(path).resolve(), Path(file) if file is not None else None, all_pipelines=all_pipelines
        )
        engine = Engine(relay, resident=True)
        with _cli_text():
            relay.target = kept = _Collector(None)
            engine.load(options)
        relay.target = None
        project = cls(engine, relay, options)
        project.messages.extend(kept.messages)
        return project

    def stages(self) -> list[StageInfo]:
        """Every stage of the project, in build order (as `pivotbuild list`)."""
        with self._calling():
            graph = self._engine.current()[1]
        infos = []
        for sid in graph.order():
            stage = graph.stages[sid]
            deps, outs = tuple(d.path for d in stage.deps), tuple(o.path for o in stage.outs)
            infos.append(StageInfo(graph.label(sid), deps, outs, stage.desc))
        return infos

    def status(self, targets: Targets = None) -> dict[str, str | None]:
        """Each stage a build of `targets` covers (None: what a plain
        `pivotbuild` builds), in build order: the reason it would run, or None
        if it is up to date, as `pivotbuild status` says.  Runs nothing.
        Raises TargetError for a target that names nothing."""
        with self._calling():
            return self._status(_targets(targets))

    def explain(self, stage: str) -> str | None:
        """Why `stage` (one stage: a name or an output it writes) would run, or
        None if it is up to date.  Raises TargetError if `stage` names no
        stage, or more than one (a matrix base: name a variant)."""
        with self._calling():
            _, graph, chosen = self._engine.load(self._with(targets=(stage,)))
            labels = [graph.label(sid) for sid in chosen]
            if len(labels) != 1:
                raise TargetError(f"'{stage}' names {len(labels)} stages ({', '.join(labels)}); explain takes one")
            return self._status(tuple(labels))[labels[0]]

    def build(
        self,
        targets: Targets = None,
        *,
        jobs: int | None = None,
        keep_going: bool = False,
        force: bool = False,
        on_event: EventHandler | None = None,
    ) -> BuildResult:
        """Bring `targets` (None: what a plain `pivotbuild` builds) and what
        they need up to date, as `pivotbuild [-j JOBS] [-k] [-B] TARGETS`.
        `on_event` is called with each event `pivotbuild --json` prints, as a
        dict, and with each message; if it raises, the build is stopped as
        Ctrl-C stops it and its exception is raised.  A stage failing is in
        the result (`ok` False), not raised.  Ctrl-C stops the stages, records
        what finished and raises KeyboardInterrupt.  Raises PivotError from
        inside a stage (a build there would wait for ever for the project lock
        its own build holds)."""
        stage = os.environ.get("PIVOT_STAGE")
        if stage is not None:
            raise PivotError(
                f"Project.build() cannot run inside stage '{stage}' (PIVOT_STAGE is set): a build inside a build "
                "would wait for ever for the project lock the running build holds; from a stage use load(), "
                "stages(), status() and explain() only, and list what the stage needs in its deps"
            )
        if jobs is not None and jobs < 1:
            raise PivotError(f"jobs={jobs}: the number of stages to run at once is 1 or more")
        options = self._with(targets=_targets(targets), jobs=jobs, keep_going=keep_going, always_make=force)
        collector = _Collector(on_event, self._engine.cancel)
        with self._calling(collector):
            code = self._engine.build(options)
        if collector.error is not None:
            raise collector.error
        if code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        return collector.result(code == EXIT_OK)

    # -- inside -------------------------------------------------------------------------

    def _status(self, targets: tuple[str, ...]) -> dict[str, str | None]:
        # From a stage, the state is read without the lock its build holds.
        read_only = "PIVOT_STAGE" in os.environ
        rows = self._engine.status(self._with(targets=targets), read_only=read_only)
        return {label: decision.reason if decision.run else None for label, decision in rows}

    def _with(self, **flags: Any) -> BuildOptions:
        return BuildOptions(self._options.cwd, self._options.file, all_pipelines=self._options.all_pipelines, **flags)

    @contextlib.contextmanager
    def _calling(self, collector: _Collector | None = None) -> Iterator[None]:
        """One call: the engine's events to `collector` (else onto
        `messages`), the Pivotfiles loaded again if they changed, errors
        given the CLI's text."""
        kept = _Collector(None)
        self._relay.target = collector or kept
        try:
            with _cli_text():
                self._fresh()
                yield
        finally:
            self._relay.target = None
            self.messages.extend(kept.messages)

    def _fresh(self) -> None:
        """Serve the Pivotfiles as they are now, as a new `pivotbuild` would.
        If they do not load, raise their error (on every call, until they
        change: the engine meanwhile keeps the last good project)."""
        reloaded = self._engine.reload()
        if reloaded.error is not None:
            self._error = reloaded.error
        elif reloaded.loaded:
            self._error = None
        if self._error is not None:
            raise self._error.with_traceback(None)


class _Relay:
    """The engine's reporter: passes events on to the current call's collector."""

    def __init__(self) -> None:
        self.target: _Collector | None = None

    def handle(self, event: Event) -> None:
        if self.target is not None:
            self.target.handle(event)

    def close(self) -> None:
        pass


class _Collector:
    """The events of one call: the stages by how they ended, the messages,
    and `on_event` fed the `--json` objects.  An `on_event` that raises stops
    the build (`stop`); its exception is kept for the caller to raise."""

    def __init__(self, on_event: EventHandler | None, stop: Callable[[], None] | None = None) -> None:
        self.on_event = on_event
        self.stop = stop
        self.json = JsonEvents()
        self.ended: dict[Status, list[str]] = {status: [] for status in Status}
        self.messages: list[str] = []
        self.error: Exception | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, Message):
            self.messages.append(message_text(event).removeprefix("pivotbuild: "))
            data: dict[str, Any] | None = event.to_json()
        else:
            data = self.json.convert(event)
            if data is not None and isinstance(event, StageFinished):
                self.ended[event.status].append(event.stage)
        if data is None or self.on_event is None or self.error is not None:
            return
        try:
            self.on_event(data)
        except Exception as exc:  # (the caller's code: raised once the build has stopped)
            self.error = exc
            if self.stop is not None:
                self.stop()

    def result(self, ok: bool) -> BuildResult:
        def names(status: Status) -> tuple[str, ...]:
            return tuple(self.ended[status])

        return BuildResult(
            ok,
            ran=names(Status.RAN),
            skipped=names(Status.SKIPPED),
            restored=names(Status.RESTORED),
            failed=names(Status.FAILED),
            blocked=names(Status.BLOCKED),
            cancelled=names(Status.CANCELLED),
            messages=tuple(self.messages),
        )


def _targets(targets: Targets) -> tuple[str, ...]:
    if targets is None:
        return ()
    return (targets,) if isinstance(targets, str) else tuple(targets)


@contextlib.contextmanager
def _cli_text() -> Iterator[None]:
    """A Pivotfile's errors raised with the text the CLI prints for them as
    their `str()`: the located errors, then the summary (still `.message`)."""
    try:
        yield
    except PivotfileError as exc:
        exc.args = (f"{exc.render()}\n{exc.message}",)
        raise


__all__ = ["BuildResult", "EventHandler", "PivotError", "Project", "StageInfo"]
