"""One build, end to end: load, select, lock, decide, schedule, run, record.

`Engine` outlives a build: watch mode and the RPC server submit builds to the
same engine, and a build can be cancelled from another thread.  The engine
never prints: everything it has to say is an event for its reporter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pivotbuild import paths
from pivotbuild.build.decider import FORCED, PENDING_COMMIT, Decision, decide
from pivotbuild.build.load import load_compiled
from pivotbuild.build.options import BuildOptions
from pivotbuild.build.run import BuildRun, Interrupted
from pivotbuild.build.selection import selected
from pivotbuild.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, MissingInputs, PivotfileError
from pivotbuild.events import (
    Decided,
    Event,
    Message,
    Reporter,
    Status,
)
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Stage, StageId
from pivotbuild.paths import STATE_DIR
from pivotbuild.project import LoadOptions, Project
from pivotbuild.state import seal, snapshot
from pivotbuild.state.hashing import hash_file
from pivotbuild.state.projectlock import ProjectLock
from pivotbuild.state.seal import Seal
from pivotbuild.state.snapshot import Snapshot
from pivotbuild.state.store import StateStore

_UP = Decision(False, "up to date")


@dataclasses.dataclass(frozen=True, slots=True)
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


class Engine:
    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def emit(self, event: Event) -> None:
        self.reporter.handle(event)

    def load(self, options: BuildOptions) -> tuple[Project, BuildGraph, list[StageId]]:
        project, graph = load_compiled(
            LoadOptions(options.cwd, options.file, options.overrides, options.all_pipelines), self.warn
        )
        targets = selected(project, graph, options.targets)
        return project, graph, targets

    def build(
        self, options: BuildOptions, cancel: threading.Event | None = None, preloaded: Preloaded | None = None
    ) -> int:
        """Bring the targets up to date.  Returns the exit status (0, 1 or 130)."""
        if preloaded is None:
            project, graph, targets = self.load(options)
        else:
            project, graph = preloaded.project, preloaded.graph
            targets = selected(project, graph, options.targets)
        closure = graph.upstream(targets)
        # Before the lock, as the ordinary path does; a stage found sealed had
        # every dep in place when its stamps were checked, moments ago.
        held = preloaded.held if preloaded is not None else frozenset()
        check_sources(project, graph, [s for s in closure if graph.index_of(s) not in held] if held else closure)
        check_runnable(graph, closure)
        with self.state(project, options) as store:
            if preloaded is None:
                sealed = open_seal(project, store, self.warn)
            else:
                sealed = preloaded.seal if preloaded.seal is not None and preloaded.seal.state_unchanged() else None
            if options.dry_run or options.question:
                decisions = self._decisions(graph, closure=closure, store=store, options=options, sealed=sealed)
                if options.dry_run:
                    for label, decision in decisions:
                        self.emit(Decided(label, decision.run, decision.reason))
                return EXIT_FAILED if options.question and any(d.run for _, d in decisions) else EXIT_OK
            run = BuildRun(
                self,
                project=project,
                graph=graph,
                closure=closure,
                store=store,
                options=options,
                cancel=cancel or threading.Event(),
                seal=sealed,
            )
            code = run.execute()
            store.close()  # lockfiles written and stat caches settled: now seal what is up to date
            if code != EXIT_INTERRUPTED:  # (an interrupted build may leave outputs uncached: see BuildRun._heal)
                self._seal(project, graph, store, run, sealed)
            return code

    def status(self, options: BuildOptions) -> list[tuple[str, Decision]]:
        """Each selected stage (and what it needs) with its decision; runs nothing.
        A stage up to date with a --no-commit result is "pending commit": the
        build leaves it alone, but the lockfile does not have it yet."""
        project, graph, targets = self.load(options)
        closure = graph.upstream(targets)
        with self.state(project, options) as store:
            decisions = self._decisions(graph, closure=closure, store=store, options=options)
            pending = {graph.label(s) for s in closure if store.pending(graph.stages[s]) is not None}
        return [
            (label, Decision(False, PENDING_COMMIT) if label in pending and not d.run else d) for label, d in decisions
        ]

    def run_stages(self, options: BuildOptions, fail_fast: bool, cancel: threading.Event | None = None) -> int:
        """`pivotbuild run`: exactly the named stages, in the order given, without
        their dependencies; a failure stops the rest only with `fail_fast`."""
        project, graph, _ = self.load(BuildOptions(cwd=options.cwd, file=options.file, overrides=options.overrides))
        cwd = paths.rel_dir(project.root, project.cwd) if project.cwd.is_relative_to(project.root) else ""
        chosen: list[StageId] = []
        for target in options.targets:
            for sid in graph.order(graph.select([target], cwd)):
                if sid not in chosen:
                    chosen.append(sid)
        check_runnable(graph, chosen)
        chain = {s: ([chosen[i - 1]] if i else []) for i, s in enumerate(chosen)}
        run_options = dataclasses.replace(options, keep_going=not fail_fast)
        with self.state(project, options) as store:
            run = BuildRun(
                self,
                project=project,
                graph=graph,
                closure=chosen,
                store=store,
                options=run_options,
                cancel=cancel or threading.Event(),
                order_after=chain,
                block_on_failure=False,
            )
            return run.execute()

    def _decisions(
        self,
        graph: BuildGraph,
        *,
        closure: list[StageId],
        store: StateStore,
        options: BuildOptions,
        sealed: Seal | None = None,
    ) -> list[tuple[str, Decision]]:
        decisions: dict[StageId, Decision] = {}
        for sid in closure:
            stage = graph.stages[sid]
            upstream = [u for u in graph.upstream_stages(sid) if decisions.get(u, _UP).run]
            if options.always_make:  # -B: the whole closure, as make does, and for the reason the build gives
                decision = Decision(True, FORCED)
            elif upstream:
                decision = Decision(True, f"upstream {graph.label(upstream[0])} will run")
            elif sealed is not None and sealed.holds([graph.index_of(sid)]):
                decision = _UP
            else:
                decision = decide_stage(stage, store, store.root, False)[0]
            decisions[sid] = decision
        return [(graph.label(s), d) for s, d in decisions.items()]

    def _seal(self, project: Project, graph: BuildGraph, store: StateStore, run: BuildRun, old: Seal | None) -> None:
        """Seal every stage that is up to date after this build (see seal.py).
        Stages this build did not decide keep their old seal, valid because
        their records did not change; a seal that cannot be written only costs
        the next no-op its speed."""
        main = project.main
        if main is None or not project.plan_id:
            return
        main_dir = project.root / main.dir if main.dir else project.root
        if any(st.pending for st in store.pipelines.values()):
            seal.remove(main_dir)
            return
        locks = []
        for st in store.pipelines.values():
            try:
                digest = hash_file(st.lock_path)
            except FileNotFoundError:
                digest = ""
            except OSError:
                return
            locks.append((str(st.lock_path), digest))
        absent = [str(p) for st in store.pipelines.values() for p in (st.journal_path, st.pending_path)]
        new = seal.Seal(project.plan_id, locks, absent)
        now = time.time_ns()
        for i, (sid, stage) in enumerate(graph.stages.items()):
            status = run.status.get(sid)
            if status is None or sid in run.sealed_skips:
                if old is not None and not stage.always:
                    new.carry(old, i)
                continue
            record = store.record(stage)
            if stage.always or record is None or status not in (Status.RAN, Status.SKIPPED, Status.RESTORED):
                continue
            if sid in run.storer.unstored:
                continue  # the next build must decide it, and store what the cache lacks
            try:
                recorded = (*record.deps, *record.outs)
                files = seal.stage_files(recorded, project.root, store.statcache(stage).entries, now)
            except seal.Unsealable:
                continue
            new.add(i, files)
        try:
            new.write(main_dir)
        except OSError:
            seal.remove(main_dir)

    @contextlib.contextmanager
    def state(self, project: Project, options: BuildOptions) -> Iterator[StateStore]:
        """The project lock held, and every pipeline's state open, for one build."""
        with ProjectLock(project.root / STATE_DIR, wait=not options.no_wait, on_wait=self._say):
            store = StateStore(project.root, project.pipelines, self.warn)
            try:
                yield store
            finally:
                store.close()

    def decide(self, stage: Stage, store: StateStore, forced: bool) -> tuple[Decision, Snapshot]:
        return decide_stage(stage, store, store.root, forced)

    def warn(self, text: str) -> None:
        self.emit(Message(text, "warning"))

    def _say(self, text: str) -> None:
        self.emit(Message(text))


def open_seal(project: Project, store: StateStore, warn: Callable[[str], None]) -> Seal | None:
    """The seal of the last build, if it still holds for this plan and these
    lockfiles.  A damaged seal is reported through `warn` and removed."""
    main = project.main
    if main is None or not project.plan_id:
        return None
    main_dir = project.root / main.dir if main.dir else project.root
    try:
        sealed = seal.read(main_dir, project.plan_id)
    except seal.Damaged as exc:
        shown = seal.seal_path(main_dir).relative_to(project.root).as_posix()
        warn(f"{shown}: {exc}; ignoring it, so the stages are checked by their contents")
        seal.remove(main_dir)
        return None
    return sealed if sealed is not None and sealed.state_unchanged() else None


def decide_stage(stage: Stage, store: StateStore, root: Path, forced: bool) -> tuple[Decision, Snapshot]:
    """Hash what `stage` needs now and decide whether it must run."""
    snap = snapshot.take(stage, root, store.statcache(stage))
    return decide(store.record(stage), snap, forced=forced, always=stage.always), snap


def check_sources(project: Project, graph: BuildGraph, closure: list[StageId]) -> None:
    """Raise MissingInputs locating every dep of `closure` that nothing writes and that is absent."""
    root = str(project.root)
    problems = graph.missing_inputs(lambda p: os.path.lexists(os.path.join(root, p)), among=closure)
    if problems:
        raise MissingInputs(problems)


def check_runnable(graph: BuildGraph, closure: list[StageId]) -> None:
    """Raise PivotfileError locating each `py:` of `closure`: this version runs only `run:` scripts."""
    problems = []
    for sid in closure:
        stage = graph.stages[sid]
        if stage.command is None:
            name = graph.label(StageId(sid.pipeline, stage.base))  # once for all the variants of a matrix
            message = f"stage '{name}' uses 'py:', which this version of pivotbuild cannot run yet; use 'run:' for now"
            problems.append(graph.located(stage.py_loc or stage.loc, message))
    if problems:
        raise PivotfileError(problems)


__all__ = ["Engine", "Interrupted", "MissingInputs", "Preloaded"]
