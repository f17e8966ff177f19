"""One build, end to end: load, select, lock, decide, schedule, run, record.

`Engine` outlives a build.  It loads the project once (a `LoadedProject`) and
serves it to every build until `reload` finds a Pivotfile or params file
changed; the CLI uses it for one build, watch mode, the agent server and the
Python API for many.  `cancel` stops the running build from any thread (or a
signal handler); `reads` says which paths a build of some targets reads (for a
watcher).  The job server and the executor are handed in (by default: our own
token pool sized by `-j`, and local processes).  The engine never prints:
everything it has to say is an event for its reporter.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from itertools import compress
from operator import not_
from pathlib import Path

from pivotbuild.build.admission import Admission, JobServer, TokenPool
from pivotbuild.build.cancel import CancelToken
from pivotbuild.build.checks import check_runnable, check_sources
from pivotbuild.build.decider import Decider, Decision
from pivotbuild.build.elsewhere import left_message, left_on_remote
from pivotbuild.build.executors.base import Changed, Executor, Inbox
from pivotbuild.build.executors.choice import choose
from pivotbuild.build.kept import KeptSeal
from pivotbuild.build.options import BuildOptions
from pivotbuild.build.recorder import DryRecorder, Outcome, Recorder
from pivotbuild.build.run import BuildRun, Interrupted
from pivotbuild.build.scheduler import Scheduler
from pivotbuild.build.selection import selected
from pivotbuild.build.session import LoadedProject, Reloaded
from pivotbuild.build.settled import unsettled
from pivotbuild.cache import pages
from pivotbuild.cache.copying import HELD, holder
from pivotbuild.cache.outputs import OutputCache
from pivotbuild.cache.store import Mode
from pivotbuild.errors import EXIT_FAILED, EXIT_OK, MissingInputs
from pivotbuild.events import (
    Decided,
    Event,
    Message,
    Reporter,
    Status,
)
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId
from pivotbuild.paths import STATE_DIR, joined
from pivotbuild.project import LoadOptions, Project
from pivotbuild.state import history, seal, stamps
from pivotbuild.state.projectlock import ProjectLock
from pivotbuild.state.seal import Seal
from pivotbuild.state.store import StateStore
from pivotbuild.structs import Protocol, replace, struct

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from pivotbuild.build.watchset import WatchSet


@struct(frozen=True, slots=True, eq=False)  # handed over, never compared (see events.py)
class Preloaded:
    """What the fast path (build/fastpath.py) already read for a build: the project and
    graph restored from a fresh compiled plan, the seal (re-checked against the
    lockfiles once the project is locked; each stage's stamps are checked
    again when it is decided), and the stage indices it found sealed when it
    looked, before the lock, which spares checking their deps exist."""

    project: Project
    graph: BuildGraph
    seal: Seal | None
    held: frozenset[int] = frozenset()


class ExecutorFactory(Protocol):
    """Makes the executor of one build: the project root, the build's output
    cache, the inbox results go to, the build's cancel switch, and whether
    outputs are stored in the cache."""

    def __call__(
        self, root: Path, outputs: OutputCache, inbox: Inbox, cancel: threading.Event, *, store: bool
    ) -> Executor: ...


class Engine:
    def __init__(
        self,
        reporter: Reporter,
        *,
        jobserver: JobServer | None = None,
        executor: ExecutorFactory | None = None,
        resident: bool = False,
    ) -> None:
        """`jobserver` hands out the job tokens of every build (default: a pool
        of `-j` tokens, made per build); `executor` makes each build's executor
        (default: the one `--executor` or the project's config chooses, per
        build: build/executors/choice.py).
        `resident`: many builds will follow (watch mode): the lockfiles and
        stat caches stay in memory between them, read again only if another
        process wrote them meanwhile."""
        self.reporter = reporter
        self.resident = resident
        self._warm: tuple[StateStore, Path, tuple[str, ...], tuple[object, ...]] | None = None
        self._recent: history.Recent | None = None
        self.jobserver = jobserver
        self.executor = executor
        self.session: LoadedProject | None = None
        self._cancel: threading.Event | None = None  # the running build's
        self._running_build: tuple[Inbox, str] | None = None  # its inbox, and the project root
        self.waited = False  # the last build waited for another's project lock
        # Where a build server keeps an engine (cli/residents.py): the work a
        # build leaves for after its client has its answer (the seal: `kept`).
        self.later: list[Callable[[], None]] | None = None
        # A build server's seal of its last build: made after the answer, kept
        # for its next fast check, written once the server is idle (build/kept.py).
        self.kept = KeptSeal(self._still_warm, lambda: self._warm[1] if self._warm else None, self._waiting)

    def emit(self, event: Event) -> None:
        self.reporter.handle(event)

    def load(self, options: BuildOptions) -> tuple[Project, BuildGraph, list[StageId]]:
        """The project (loaded once, then served until `reload`), its graph, and the selected stages."""
        project, graph = self._session(options).current()
        targets = selected(project, graph, options.targets)
        return project, graph, targets

    def current(self) -> tuple[Project, BuildGraph]:
        """The project and graph served now (loaded by the last `load`, `build` or `reload`)."""
        if self.session is None:
            raise RuntimeError("Engine.current: no project loaded yet (build or load first)")
        return self.session.current()

    def reload(self, force: bool = False) -> Reloaded:
        """Load the project again if a Pivotfile, included pipeline or params file
        changed (with `force`, whether or not one seems to have).  If the new
        files do not load, the result carries the error and the last good
        project keeps serving."""
        if self.session is None:
            return Reloaded()
        return self.session.reload(force)

    def reads(self, targets: Sequence[str] = ()) -> WatchSet:
        """The paths a build of `targets` reads (deps, glob directories,
        Pivotfiles, params files), for a watcher; the project must be loaded."""
        if self.session is None:
            raise RuntimeError("Engine.reads: no project loaded yet (build or load first)")
        return self.session.reads(targets)

    def cancel(self) -> None:
        """Stop the running build, if any: its stages are killed and recorded as
        cancelled, and `build` returns 130.  Safe from any thread and from a
        signal handler."""
        token = self._cancel
        if isinstance(token, CancelToken):
            token.cancel()
        elif token is not None:
            token.set()

    def changed(self, paths: Collection[str], *, restart: bool = False) -> bool:
        """Files the running build reads changed (`paths`, absolute): it starts
        no new stage and ends once the running ones have (the watcher then
        builds again); with `restart`, a running stage whose inputs now hold
        other contents is killed at once.  False if no build is running.
        Safe from any thread."""
        running = self._running_build
        if running is None:
            return False
        inbox, root = running
        inbox.put(Changed(frozenset(paths), root, restart))
        return True

    def _session(self, options: BuildOptions, preloaded: Preloaded | None = None) -> LoadedProject:
        wanted = LoadOptions(options.cwd, options.file, options.overrides, options.all_pipelines)
        if self.session is None or self.session.options != wanted:
            pair = (preloaded.project, preloaded.graph) if preloaded is not None else None
            self.session = LoadedProject(wanted, self.warn, preloaded=pair)
        return self.session

    def build(
        self, options: BuildOptions, cancel: threading.Event | None = None, preloaded: Preloaded | None = None
    ) -> int:
        """Bring the targets up to date.  Returns the exit status (0, 1 or 130).
        `cancel` (else a token of the engine's own, see `cancel`) stops it."""
        stamps.forget_mounts()  # (what was mounted when an earlier build ran may be gone)
        self.kept.clear()  # (the last build's seal: this one makes its own)
        self._session(options, preloaded)
        with self._running(cancel) as token:
            return self._build(options, token, preloaded)

    def _release(self) -> None:
        """The build's records are written: the writeback of the copies it
        kept begins (copying.Held), in a build server once its client has
        its answer.  (A process of its own sends each as it is made: its
        thread would not outlive it, and copies left to the kernel made the
        builds after wait for its writeback: docs/performance.md.)"""
        if not self.resident:
            return
        if self.later is not None:
            self.later.append(HELD.release)
        else:
            HELD.release()

    @contextlib.contextmanager
    def _running(self, cancel: threading.Event | None) -> Iterator[threading.Event]:
        """The cancel switch of the build now starting, for `cancel` to reach;
        once the build is over (its records written), the writeback of the
        copies it kept begins (`_release`)."""
        token = self._cancel = cancel if cancel is not None else CancelToken()
        try:
            yield token
        finally:
            self._cancel = None
            self._release()

    def _build(self, options: BuildOptions, cancel: threading.Event, preloaded: Preloaded | None) -> int:
        project, graph, targets = self.load(options)
        closure = graph.upstream(targets)
        # Before the lock, as the ordinary path does; a stage found sealed had
        # every dep in place when its stamps were checked, moments ago.
        held = preloaded.held if preloaded is not None else frozenset()
        # (A stage found sealed had its sources and its code unchanged since it
        # ran: they were found then.)
        if held:  # (in C: a turn of a loop for each of 1,000 stages was a fifth of a millisecond)
            found = map(held.__contains__, map(graph.index_map.__getitem__, closure))
            unheld = list(compress(closure, map(not_, found)))
        else:
            unheld = closure
        check_sources(project, graph, unheld)
        check_runnable(project.root, graph, unheld)
        with self.state(project, options) as store:
            plain = not (options.dry_run or options.question or options.always_make)
            if preloaded is None:
                sealed = open_seal(project, self.warn)
                # One look at every stamp the seal holds, now the lock is ours.
                if sealed is not None and plain:
                    held = frozenset(sealed.holding([graph.index_of(s) for s in closure]))
            else:
                sealed = _still_valid(preloaded.seal)
                if self.waited:  # (the fast path looked before another build went)
                    held = frozenset()
            # That look at the seal stands for the stages it found sealed until
            # a stage runs.
            trusted = held if sealed is not None else frozenset()
            if options.dry_run or options.question:
                plan = self._plan(
                    graph, closure, Decider(graph, store, seal=sealed, forced=options.always_make, plan=True)
                )
                if options.dry_run:
                    for sid, decision in plan:
                        self.emit(Decided(graph.label(sid), decision.run, decision.reason))
                return EXIT_FAILED if options.question and any(d.run for _, d in plan) else EXIT_OK
            # Stages that look found sealed, with nothing unsealed upstream,
            # cannot change in this build: they are counted, not scheduled.
            settled: list[StageId] = []
            if trusted and plain:
                closure, settled = unsettled(graph, closure, trusted)
            outcome, recorder = self._run(
                project,
                graph,
                closure,
                store,
                options=options,
                cancel=cancel,
                seal=sealed,
                trusted=trusted,
                settled=settled,
            )
            store.close()  # lockfiles written and stat caches settled: now seal what is up to date
            if recorder.elsewhere:
                self.emit(Message(left_message(len(recorder.elsewhere), options.all_pipelines)))
            if not outcome.interrupted:  # (an interrupted build may leave outputs uncached: see Recorder.heal)
                if self.later is not None and self.resident:
                    self.later.append(
                        lambda: self.kept.make(project, graph, outcome, sealed=sealed, recorder=recorder, store=store)
                    )
                else:
                    recorder.seal(project, graph, outcome, sealed)
            return outcome.code

    def _still_warm(self, store: StateStore) -> bool:
        """Whether `store` is the state this engine's last build closed, and no
        other process has written the state files since."""
        warm = self._warm
        return warm is not None and warm[0] is store and store.stamps() == warm[3]

    def status(self, options: BuildOptions, *, read_only: bool = False) -> list[tuple[str, Decision]]:
        """Each selected stage (and what it needs) with its decision, as `status`
        shows it (see Decider.shown); runs nothing.  `read_only`: without the
        project lock, writing nothing (from a stage: its build holds the lock)."""
        project, graph, targets = self.load(options)
        closure = graph.upstream(targets)
        state = self.state(project, options) if not read_only else _read_only(project, self.warn)
        with state as store:
            decider = Decider(graph, store, plan=True)
            return [(graph.label(sid), decider.shown(sid, d)) for sid, d in self._plan(graph, closure, decider)]

    def run_stages(self, options: BuildOptions, fail_fast: bool, cancel: threading.Event | None = None) -> int:
        """`pivotbuild run`: exactly the named stages, in the order given, without
        their dependencies; a failure stops the rest only with `fail_fast`."""
        project, graph, _ = self.load(BuildOptions(cwd=options.cwd, file=options.file, overrides=options.overrides))
        cwd = project.cwd_dir
        chosen: list[StageId] = []
        for target in options.targets:
            for sid in graph.order(graph.select([target], cwd)):
                if sid not in chosen:
                    chosen.append(sid)
        check_runnable(project.root, graph, chosen)
        chain = {s: ([chosen[i - 1]] if i else []) for i, s in enumerate(chosen)}
        run_options = replace(options, keep_going=not fail_fast)
        with self._running(cancel) as token, self.state(project, options) as store:
            outcome, _ = self._run(
                project, graph, chosen, store, options=run_options, cancel=token, after=chain, block_on_failure=False
            )
            return outcome.code

    def _run(
        self,
        project: Project,
        graph: BuildGraph,
        closure: list[StageId],
        store: StateStore,
        *,
        options: BuildOptions,
        cancel: threading.Event | None,
        seal: Seal | None = None,
        trusted: frozenset[int] = frozenset(),
        after: dict[StageId, list[StageId]] | None = None,
        block_on_failure: bool = True,
        settled: list[StageId] | None = None,
    ) -> tuple[Outcome, Recorder]:
        """Build `closure` (every stage of the build, which `-B` forces whole):
        the loop, and the parts it ties together.  `after` replaces the graph's
        edges (for `run`, the given order); `settled` are the build's other
        stages, up to date by the seal before it began (see build/settled.py)."""
        cancel = cancel or threading.Event()
        inbox = Inbox(self.emit)
        outputs = OutputCache(project.root, inbox.warn, building=True)
        outputs.cache.held = holder(self.resident)  # (whether its copies' writeback waits: copying.Held, Left)
        make_executor = self.executor or choose(
            options.executor, outputs.settings, project.root, no_checkout=options.no_checkout
        )
        remote_only = left_on_remote(graph, closure) if options.no_checkout else frozenset()
        recorder = Recorder(project, store, outputs, inbox, emit=self.emit, options=options, remote_only=remote_only)
        expected = recorder.expected(graph, closure, self._recent_builds(project))
        edges = after if after is not None else _edges(graph, closure)
        executor = make_executor(project.root, outputs, inbox, cancel, store=recorder.caching)
        if outputs.mode is Mode.HARDLINK and pages.wanted():  # (the old objects its stages replace: cache/pages.py)
            pages.write_back([joined(project.root, o.path) for sid in closure for o in graph.stages[sid].outs])
        jobserver = self._jobserver(options)
        run = BuildRun(
            self.emit,
            graph=graph,
            scheduler=Scheduler(closure, edges, expected, block_on_failure=block_on_failure),
            decider=Decider(
                graph, store, seal=seal, forced=options.always_make, trusted=trusted, elsewhere=recorder.elsewhere
            ),
            admission=Admission(jobserver, options.load_average, mem_limit=options.mem_limit),
            executor=executor,
            recorder=recorder,
            inbox=inbox,
            cancel=cancel,
            keep_going=options.keep_going,
            expected=expected,
            states=getattr(self.reporter, "wants_states", False),
            settled=settled or [],
            settled_events=getattr(self.reporter, "wants_skipped", True),
        )
        self._running_build = (inbox, str(project.root))
        try:
            return run.execute(), recorder
        finally:
            self._running_build = None
            outputs.close()  # the build's pack of small objects indexed
            if self.later is not None and self.resident:
                outputs.close_new_runs()  # (those whose logs it makes: before the answer)
                self.later.append(functools.partial(outputs.close_runs, create=False))  # (the rest: after it)
            else:
                outputs.close_runs()
            if jobserver is not self.jobserver:
                jobserver.close()  # (ours: its fifo removed)

    def _plan(self, graph: BuildGraph, closure: list[StageId], decider: Decider) -> list[tuple[StageId, Decision]]:
        """Each stage of `closure` with its decision: the build loop with the dry
        executor and recorder, so nothing runs and nothing is written.  Of its
        events, only messages are shown (a plan shows `Decided` events)."""
        from pivotbuild.build.executors.dry import DryExecutor  # here: a build imports only what it runs

        inbox = Inbox(self._messages)
        run = BuildRun(
            self._messages,
            graph=graph,
            scheduler=Scheduler(closure, _edges(graph, closure), {}),
            decider=decider,
            admission=Admission(TokenPool(max(1, len(closure))), available_memory=_unlimited),
            executor=DryExecutor(inbox),
            recorder=DryRecorder(),
            inbox=inbox,
            cancel=threading.Event(),
            keep_going=True,
        )
        outcome = run.execute()
        if outcome.interrupted:
            raise KeyboardInterrupt
        return [(sid, Decision(outcome.status[sid] is Status.RAN, outcome.reasons[sid])) for sid in closure]

    def _jobserver(self, options: BuildOptions) -> JobServer:
        """The engine's job server if it was given one (make's, when pivotbuild
        runs under make), else a pool of `-j` tokens the stages share
        (build/sharedpool.py)."""
        if self.jobserver is not None:
            return self.jobserver
        from pivotbuild.build.sharedpool import SharedPool  # (a build that runs a stage makes its pipe)

        return SharedPool(options.jobs or os.cpu_count() or 1)

    def _messages(self, event: Event) -> None:
        if isinstance(event, Message):
            self.emit(event)

    @contextlib.contextmanager
    def state(self, project: Project, options: BuildOptions) -> Iterator[StateStore]:
        """The project lock held, and every pipeline's state open, for one build.
        (`waited`: whether it had to wait for another build's lock.)"""
        self.waited = False
        with ProjectLock(project.root / STATE_DIR, wait=not options.no_wait, on_wait=self._waiting):
            store = self._warm_store(project) or StateStore(project.root, project.pipelines, self.warn)
            self._warm = None
            try:
                yield store
            finally:
                store.close()
            if self.resident:
                self._warm = (store, project.root, tuple(p.dir for p in project.pipelines), store.stamps())

    def _recent_builds(self, project: Project) -> history.Recent | None:
        """A resident engine's view of the history (read once, then as it grows)."""
        if not self.resident:
            return None
        if self._recent is None or self._recent.path.parent != project.root / STATE_DIR:
            self._recent = history.Recent(project.root / STATE_DIR)
        return self._recent

    def _warm_store(self, project: Project) -> StateStore | None:
        """The state kept from the last build, if it is this project's and no
        other process has written its files since (under the lock: none can now)."""
        warm = self._warm
        if warm is None:
            return None
        store, root, dirs, stamps = warm
        if root != project.root or dirs != tuple(p.dir for p in project.pipelines) or store.stamps() != stamps:
            return None
        store.reopen()
        return store

    def warn(self, text: str) -> None:
        self.emit(Message(text, "warning"))

    def _say(self, text: str) -> None:
        self.emit(Message(text))

    def _waiting(self, text: str) -> None:
        self.waited = True
        self._say(text)


@contextlib.contextmanager
def _read_only(project: Project, warn: Callable[[str], None]) -> Iterator[StateStore]:
    """The project's state as it is now, read without the project lock (see StateStore, `read_only`)."""
    yield StateStore(project.root, project.pipelines, warn, read_only=True)


def open_seal(project: Project, warn: Callable[[str], None]) -> Seal | None:
    """The seal of the last build, if it still holds for this plan and these
    lockfiles.  A damaged seal is reported through `warn` and removed."""
    main_dir = project.main_dir
    if main_dir is None or not project.plan_id:
        return None
    try:
        sealed = seal.read(main_dir, project.plan_id)
    except seal.Damaged as exc:
        shown = seal.seal_path(main_dir).relative_to(project.root).as_posix()
        warn(f"{shown}: {exc}; ignoring it, so the stages are checked by their contents")
        seal.remove(main_dir)
        return None
    return _still_valid(sealed)


def _still_valid(sealed: Seal | None) -> Seal | None:
    """`sealed` if the lockfiles are still as it recorded them, else None."""
    return sealed if sealed is not None and sealed.state_unchanged() else None


def _edges(graph: BuildGraph, closure: list[StageId]) -> dict[StageId, list[StageId]]:
    """For each stage of `closure`, the stages of `closure` it reads from."""
    in_build = set(closure)
    return {s: [u for u in graph.upstream_stages(s) if u in in_build] for s in closure}


def _unlimited() -> int:
    """The memory a plan admits stages against: no end of it (nothing runs)."""
    return 1 << 62


__all__ = ["Engine", "Interrupted", "MissingInputs", "Preloaded"]
