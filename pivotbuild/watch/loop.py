"""Watch mode: build, then rebuild what each change affects, from one
long-lived engine, until Ctrl-C (CLI.md, "Watch mode"; docs/watch.md).

One thread, the caller's (the main thread: Ctrl-C reaches the build there),
runs every build and everything else the loop does, one at a time.  Other
threads only put work on its queue: the change source each batch of changed
paths (after `WatchSet.matches` kept those a build reads), the agent server
a build it was asked for or a question to answer between builds.  A change
that comes while a build runs also tells the engine at once (`Engine.changed`):
no new stage starts, the running ones finish (with `restart`, those whose
inputs changed are killed), and the loop builds again.

The project stays loaded between builds (the engine's `LoadedProject`): a
change to a Pivotfile or params file reloads it, and one that does not load
is reported while the last good graph keeps serving.  Which builds are shown
is watch/reporting.py's business: a change that changes nothing is not.
"""

from __future__ import annotations

import functools
import os
import queue
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pivotbuild.build.cancel import CancelToken
from pivotbuild.build.engine import Engine
from pivotbuild.build.options import BuildOptions
from pivotbuild.build.selection import selected
from pivotbuild.build.watchset import WatchSet
from pivotbuild.errors import EXIT_INTERRUPTED, EXIT_OK, PivotError, PivotfileError
from pivotbuild.events import BuildFinished, Event, Message, Reporter, Watching
from pivotbuild.graph import BuildGraph
from pivotbuild.paths import PIVOTFILE, STATE_DIR
from pivotbuild.project import all_pivotfiles
from pivotbuild.structs import replace, struct
from pivotbuild.watch.changes import ChangeSource
from pivotbuild.watch.reporting import QuietBuilds, Tee


class WatchError(PivotError):
    """What must be watched cannot be."""


# How long the loop's thread waits on its queue at a time: Ctrl-C is seen
# between waits at the latest.
_WAIT_S = 0.5


@struct(frozen=True, slots=True, eq=False)
class _Changes:
    paths: frozenset[str]


@struct(frozen=True, slots=True, eq=False)
class _BuildRequest:
    targets: tuple[str, ...] | None  # None: the watched targets
    force: bool


class _Stop(Exception):
    """`stop` was called: the loop returns."""


@struct(frozen=True, slots=True, eq=False)
class _Call:
    fn: Callable[[], Any]
    result: Future[Any]


class WatchLoop:
    """Watch mode for the build `options` asks for, its events to `reporter`
    (and to each of `also`: the agent server's event log); changes from
    `source`.  With `restart`, a change kills the running stages whose
    inputs it changed."""

    def __init__(
        self,
        reporter: Reporter,
        options: BuildOptions,
        source: ChangeSource,
        *,
        restart: bool = False,
        also: Sequence[Reporter] = (),
        every: Sequence[Reporter] = (),
        engine: Callable[..., Engine] = Engine,
    ) -> None:
        """`also` see the builds shown, as `reporter` does; `every` see every
        build's events, shown or not (the agent's view of stage states)."""
        self.options = options
        self.source = source
        self.restart = restart
        self.quiet = QuietBuilds(Tee(reporter, *also, _LastBuild(self)))
        self.engine = engine(Tee(self.quiet, *every) if every else self.quiet, resident=True)
        self.building = False
        self.last: BuildFinished | None = None  # the last build shown
        self.last_at = 0.0
        self.watchset: WatchSet | None = None
        self._queue: queue.SimpleQueue[_Changes | _BuildRequest | _Call] = queue.SimpleQueue()
        self._outputs: frozenset[str] = frozenset()  # the watched build's outputs (absolute)
        self._output_dirs: frozenset[str] = frozenset()  # the directories below the root holding them
        self._token = _BuildToken()  # the running build's cancel switch
        self._stopped_early = False  # the last build was stopped by a change
        self._reads: WatchSet | None = None  # what the running build reads (an agent's may read other files)
        self._watched_outputs: frozenset[str] = frozenset()  # outputs of the build that the watch set holds
        self._after_build: dict[str, tuple[int, ...] | None] = {}  # their stamps as the last build left them
        self._built_at_ns = 0  # when the last build ended
        self._broken = False  # the Pivotfiles did not load at the last try
        self._announced: int | None = None

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Load the project and start watching (`run` does, if not done yet).
        A project that does not load raises, as a build's would."""
        self.engine.load(self.options)
        self._aim(strict=True)

    def run(self) -> int:
        """Build, then watch and rebuild until interrupted (130) or stopped (0)."""
        try:
            if self.watchset is None:
                self.start()
            self._build(self.options)
            while True:
                self._announce()
                self._serve(self._next())
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except _Stop:
            return EXIT_OK
        finally:
            self.source.close()

    def stop(self) -> None:
        """End `run` once the current build (if any) is over; from any thread."""
        self._queue.put(_Call(_stop, Future()))

    def _next(self) -> list[_Changes | _BuildRequest | _Call]:
        """What came in: waits for the first item, then takes all that wait."""
        while True:
            try:
                first = self._queue.get(timeout=_WAIT_S)
                break
            except queue.Empty:
                continue
        items = [first]
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _serve(self, items: list[_Changes | _BuildRequest | _Call]) -> None:
        paths: set[str] = set()
        requests: list[_BuildRequest] = []
        for item in items:
            if isinstance(item, _Changes):
                paths |= item.paths
            elif isinstance(item, _BuildRequest):
                requests.append(item)
            else:
                _answer(item)
        paths = {p for p in paths if not self._own_write(p)}
        if paths and self._affects(paths):
            self._build(self.options)
        for request in requests:
            self.quiet.show_next()
            chosen = self.options if request.targets is None else replace(self.options, targets=request.targets)
            self._build(replace(chosen, always_make=request.force) if request.force else chosen)
            if self._stopped_early:  # a change stopped it: build it again, after what the change builds
                self._queue.put(request)

    def _affects(self, paths: set[str]) -> bool:
        """Should `paths` changing start a build?  A Pivotfile or params file
        among them reloads the project first (one that does not load is
        reported, and only the other files' changes count)."""
        watchset = self.watchset
        assert watchset is not None
        sources = {p for p in paths if watchset.is_source(p)}
        if sources or self._broken:
            # (While broken, any change may be the fix: an included pipeline or
            # params file created, which the last good project did not read.)
            reloaded = self.engine.reload(force=self._broken)
            if reloaded.error is not None:
                if not self._broken or sources:
                    self._report(reloaded.error, "building with the last good Pivotfiles until this is fixed")
                self._broken = True
                sources = {p for p in paths if watchset.is_source(p) or not watchset.matches(p)}
            else:
                self._broken = False
                if reloaded.loaded:
                    return self._aim()
        return bool(paths - sources) or self._stopped_early

    def _build(self, options: BuildOptions) -> None:
        token = self._token = _BuildToken()  # the loop's own: `cancel` reaches the build from its first moment
        self._reads = self.watchset if options.targets == self.options.targets else self._reads_of(options)
        self.building = True
        self._stopped_early = False
        try:
            code = self.engine.build(options, token)
        except PivotError as exc:  # a missing input, a target gone after a reload...
            self._report(exc, "waiting for a change")
            return
        finally:
            self.building = False
            self._note_own_writes()
        if code == EXIT_INTERRUPTED and not token.by_agent:
            raise KeyboardInterrupt  # Ctrl-C or SIGTERM: the build has recorded its results
        if self.watchset is not None and self.watchset.code:
            self._aim()  # (a py: stage's code may reach other modules now: the set follows it)

    def _reads_of(self, options: BuildOptions) -> WatchSet | None:
        try:
            return self.engine.reads(options.targets)
        except PivotError:
            return None  # (the build says why)

    def _note_own_writes(self) -> None:
        """The stamps of the watched outputs as the build leaves them: an event
        on one that still has them is the build's own write (a stage's output,
        a failed stage's rollback), seen late, not an edit."""
        self._built_at_ns = time.time_ns()
        self._after_build = {p: _stamp(p) for p in self._watched_outputs}

    def _own_write(self, path: str) -> bool:
        if path in self._after_build:
            return _stamp(path) == self._after_build[path]
        if not self._written_by_build(path):
            return False
        stamp = _stamp(path)  # (under an output directory, or a directory holding outputs)
        return stamp is None or stamp[0] <= self._built_at_ns

    # -- watching ------------------------------------------------------------------------

    def _aim(self, strict: bool = False) -> bool:
        """Watch what a build of the targets reads, in the project as loaded
        now.  A problem (a target the reloaded project no longer has, a
        directory that cannot be watched) raises if `strict`, else is
        reported, and what was watched stays watched.  False if the targets
        are not in the project (a build of them would only say so again)."""
        try:
            watchset = self.engine.reads(self.options.targets)
            project, graph = self.engine.current()
            closure = graph.upstream(selected(project, graph, self.options.targets))
        except PivotError as exc:
            if strict:
                raise
            self._report(exc, "waiting for a change")
            return False
        root = str(project.root)
        self._outputs = frozenset(os.path.join(root, o.path) for sid in closure for o in graph.stages[sid].outs)
        self._output_dirs = _holders(self._outputs, root)
        self._watched_outputs = frozenset(p for p in self._outputs if watchset.matches(p))
        self.watchset = watchset
        try:
            self.source.watch(watchset.roots(), self._changed)
        except OSError as exc:
            error = WatchError(
                f"{exc}; if the system's limit on watches was reached, raise it (fs.inotify.max_user_watches on Linux)"
            )
            if strict:
                raise error from exc
            self._report(error, "waiting for a change")
        return True

    def _changed(self, paths: frozenset[str]) -> None:
        """A batch of changed paths, from the change source's thread (a bug
        here is raised in the loop's thread, which reports it, rather than
        leave watch mode deaf)."""
        try:
            self._take(paths)
        except Exception as exc:
            self._queue.put(_Call(functools.partial(_raise, exc), Future()))

    def _take(self, paths: frozenset[str]) -> None:
        watchset = self.watchset
        if watchset is None:
            return
        relevant = frozenset(p for p in paths if watchset.matches(p))
        if watchset.pivotfile_trees:
            relevant |= _pivotfiles_in_new_directories(watchset, paths - relevant)
        if self._broken:  # any file may be the fix (see _affects)
            relevant |= {p for p in paths if _under(p, watchset.root) and STATE_DIR not in p.split(os.sep)}
        if not relevant:
            return
        reads = self._reads
        if self.building and reads is not None:
            outside = [p for p in relevant if reads.matches(p) and not self._written_by_build(p)]
            if outside and self.engine.changed(outside, restart=self.restart):
                self._stopped_early = True
        self._queue.put(_Changes(relevant))

    def _written_by_build(self, path: str) -> bool:
        """Is `path` an output of the watched build, or under one, or a
        directory holding one that exists (created for the outputs: a dep's
        directory too, but a change to the dep is an event of its own)?"""
        if path in self._output_dirs and os.path.isdir(path):
            return True
        outputs = self._outputs
        while True:
            if path in outputs:
                return True
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent

    def _announce(self) -> None:
        """Say what is watched, after a build that was shown (or when that changed)."""
        watchset = self.watchset
        files = 0 if watchset is None else len(watchset.sources) + len(watchset.deps) + len(watchset.globs)
        if self.quiet.shown or files != self._announced:
            self._announced = files
            self.quiet.shown = False
            self.quiet.handle(Watching(files, self.last, self.last_at))

    def _report(self, exc: PivotError, then: str) -> None:
        """Show `exc` as the command line would, but say what watch mode does
        next (`then`) instead of the advice to run again."""
        text = exc.message
        if isinstance(exc, PivotfileError):
            self.quiet.handle(Message(exc.render(), "located"))
            text = text.removesuffix(f"; {exc.advice}")
        self.quiet.handle(Message(f"{text}; {then}", "error"))  # (shown: the watching line follows)

    # -- for the agent server (from its threads) ----------------------------------------

    def request_build(self, targets: Iterable[str] | None, force: bool) -> None:
        """Build `targets` (None: the watched ones) after the current build."""
        self._queue.put(_BuildRequest(None if targets is None else tuple(targets), force))

    def cancel(self) -> bool:
        """Kill the running build's stages, as Ctrl-C would, but keep watching."""
        token = self._token
        if not self.building:
            return False
        token.by_agent = True  # (on the token: a build that starts meanwhile has its own)
        token.cancel()
        return True

    def between_builds(self, fn: Callable[[], Any], timeout: float) -> Any:
        """`fn()` run by the loop's thread once no build runs (it may use the
        engine), and its result; raises TimeoutError."""
        call = _Call(fn, Future())
        self._queue.put(call)
        try:
            return call.result.result(timeout)
        except TimeoutError:
            call.result.cancel()  # (the loop skips it, if it has not begun it)
            raise

    def graph(self) -> BuildGraph:
        return self.engine.current()[1]


def _pivotfiles_in_new_directories(watchset: WatchSet, paths: Iterable[str]) -> frozenset[str]:
    """With --all: the Pivotfiles in those of `paths` that are directories
    where a new Pivotfile joins the build.  The notifier reports a directory
    moved in, or made and filled before it watched it, but not what is in it."""
    found: set[str] = set()
    for path in paths:
        if (
            path not in watchset.pivotfile_trees  # (the root itself: its Pivotfile's own events say)
            and watchset.is_source(os.path.join(path, PIVOTFILE))
            and os.path.isdir(path)
        ):
            found.update(str(f) for f in all_pivotfiles(Path(path)))
    return frozenset(found)


def _holders(paths: Iterable[str], root: str) -> frozenset[str]:
    """The directories below `root` that hold any of `paths` (absolute)."""
    found: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path)
        while parent.startswith(root + os.sep) and parent not in found:
            found.add(parent)
            parent = os.path.dirname(parent)
    return frozenset(found)


def _answer(call: _Call) -> None:
    if not call.result.set_running_or_notify_cancel():
        return  # given up on by its caller
    try:
        call.result.set_result(call.fn())
    except (_Stop, _Crash):
        raise
    except Exception as exc:  # for the caller to report
        call.result.set_exception(exc)


def _stop() -> None:
    raise _Stop


class _BuildToken(CancelToken):
    """A build's cancel switch; `by_agent` once an agent cancelled it (not Ctrl-C)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_agent = False


def _stamp(path: str) -> tuple[int, ...] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip(os.sep) + os.sep)


class _Crash(Exception):
    """A bug in another thread, carried to the loop's."""


def _raise(exc: Exception) -> None:
    raise _Crash(f"in the change source's thread: {exc!r}") from exc


class _LastBuild:
    """Keeps the loop's `last`: the summary of the last build shown."""

    def __init__(self, loop: WatchLoop) -> None:
        self.loop = loop

    def handle(self, event: Event) -> None:
        if isinstance(event, BuildFinished):
            self.loop.last = event
            self.loop.last_at = time.time()

    def close(self) -> None:
        pass
