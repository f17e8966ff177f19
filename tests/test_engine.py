"""The build loop (run.BuildRun) with its parts handed in: a scripted executor
that finishes stages in a chosen order (or fails them), a recorder that only
notes what it is asked, and the dry executor of a plan."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import compile_text

from pivotbuild.build.admission import Admission, TokenPool
from pivotbuild.build.decider import NEVER_RUN, UP_TO_DATE, Decider
from pivotbuild.build.executors.base import Done, Inbox, Job
from pivotbuild.build.executors.dry import DryExecutor
from pivotbuild.build.executors.runner import RunResult
from pivotbuild.build.recorder import DryRecorder, Outcome
from pivotbuild.build.run import BuildRun
from pivotbuild.build.scheduler import Scheduler
from pivotbuild.cache.outputs import Captured
from pivotbuild.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from pivotbuild.events import BuildFinished, Event, StageFinished, StageStarted, StageState, State, Status
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Stage, StageId
from pivotbuild.state.store import StateStore

# a -> c, b -> d: two independent chains.
TEXT = """
stage a:
    outs: a.txt
    run: touch a.txt

stage b:
    outs: b.txt
    run: touch b.txt

stage c:
    deps: a.txt
    run: true

stage d:
    deps: b.txt
    run: true
"""

OK = RunResult(0, None, False, False, (), 0.0)
FAILED = RunResult(1, None, False, False, ("boom",), 0.0)


class ScriptedExecutor:
    """Finishes started stages in the order of `script` ((label, result) pairs):
    each as soon as it and every stage scripted before it have started."""

    def __init__(self, inbox: Inbox, script: list[tuple[str, RunResult]]) -> None:
        self.inbox = inbox
        self.script = list(script)
        self.pending: dict[str, Job] = {}
        self.started: list[str] = []
        self.closed = False

    def start(self, job: Job) -> None:
        self.started.append(job.label)
        self.pending[job.label] = job
        while self.script and self.script[0][0] in self.pending:
            label, result = self.script.pop(0)
            self.inbox.done(Done(self.pending.pop(label), result))

    def cancel(self) -> None:
        raise AssertionError("nothing interrupts these builds")

    def close(self) -> None:
        self.closed = True


class NotingRecorder(DryRecorder):
    """Records nothing; notes which stages it recorded and rolled back.  A stage
    in `missing` "did not create its declared output"."""

    def __init__(self, missing: str = "") -> None:
        self.missing = missing
        self.recorded: list[str] = []
        self.rolled_back: list[str] = []

    def ran(self, job: Job, captured: Captured | None) -> str:
        if job.label == self.missing:
            return f"declared output {job.label}.txt was not created"
        self.recorded.append(job.label)
        return ""

    def roll_back(self, stage: Stage, label: str, quiet: bool = False) -> None:
        self.rolled_back.append(label)


class Loop:
    """A BuildRun over TEXT, with every part handed in."""

    def __init__(
        self, root: Path, *, jobs: int = 2, keep_going: bool = False, plan: bool = False, states: bool = False
    ) -> None:
        pipeline = compile_text(TEXT, root)
        self.graph = BuildGraph(pipeline.stages)
        self.store = StateStore(root, [pipeline], lambda text: None)
        self.events: list[Event] = []
        self.inbox = Inbox(self.events.append)
        self.interrupt_at = ""  # the stage whose StageFinished raises KeyboardInterrupt, once
        self.jobs = jobs
        self.keep_going = keep_going
        self.plan = plan
        self.states = states

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, StageFinished) and event.stage == self.interrupt_at:
            self.interrupt_at = ""
            raise KeyboardInterrupt

    def run(self, executor: object, recorder: DryRecorder, settled: tuple[str, ...] = ()) -> Outcome:
        """`settled`: labels of stages up to date before the build (see BuildRun)."""
        aside = [s for s in self.graph.order() if self.graph.label(s) in settled]
        closure = [s for s in self.graph.order() if s not in aside]
        after = {s: [u for u in self.graph.upstream_stages(s) if u not in aside] for s in closure}
        run = BuildRun(
            self.emit,
            graph=self.graph,
            scheduler=Scheduler(closure, after, {}),
            decider=Decider(self.graph, self.store, plan=self.plan),
            admission=Admission(TokenPool(self.jobs)),
            executor=executor,  # type: ignore[arg-type]
            recorder=recorder,
            inbox=self.inbox,
            cancel=threading.Event(),
            keep_going=self.keep_going,
            states=self.states,
            settled=aside,
        )
        return run.execute()

    def started(self) -> list[str]:
        return [e.stage for e in self.events if isinstance(e, StageStarted)]

    def finished(self) -> list[tuple[str, Status, str]]:
        return [(e.stage, e.status, e.reason) for e in self.events if isinstance(e, StageFinished)]

    def statuses(self, outcome: Outcome) -> dict[str, Status]:
        return {self.graph.label(sid): status for sid, status in outcome.status.items()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = (tmp_path / "proj").resolve()
    (r / ".pivot").mkdir(parents=True)
    return r


def test_results_are_recorded_in_the_order_they_arrive(root: Path) -> None:
    loop = Loop(root)
    recorder = NotingRecorder()
    # b, started second, finishes first: d (after b) starts before c (after a).
    executor = ScriptedExecutor(loop.inbox, [("b", OK), ("a", OK), ("d", OK), ("c", OK)])
    outcome = loop.run(executor, recorder)
    assert outcome.code == EXIT_OK
    assert executor.started == loop.started() == ["a", "b", "d", "c"]
    assert loop.finished() == [(s, Status.RAN, NEVER_RUN) for s in ("b", "a", "d", "c")]
    assert recorder.recorded == ["b", "a", "d", "c"]
    assert executor.closed
    assert isinstance(loop.events[-1], BuildFinished)
    assert loop.events[-1].ran == 4


def test_stage_states_are_sent_only_to_a_reporter_that_wants_them(root: Path) -> None:
    script = [("a", OK), ("b", OK), ("c", OK), ("d", OK)]
    quiet = Loop(root)
    quiet.run(ScriptedExecutor(quiet.inbox, script), NotingRecorder())
    assert not [e for e in quiet.events if isinstance(e, StageState)]
    loop = Loop(root, states=True)
    loop.run(ScriptedExecutor(loop.inbox, script), NotingRecorder())
    states = [(e.stage, e.state) for e in loop.events if isinstance(e, StageState)]
    assert [st for stage, st in states if stage == "c"] == [
        State.PENDING,
        State.PREPARING,
        State.READY,
        State.RUNNING,
        State.DONE,
    ]
    assert [type(e) for e in loop.events if not isinstance(e, StageState)] == [type(e) for e in quiet.events]


class CancellableExecutor(ScriptedExecutor):
    def cancel(self) -> None:
        pass


def test_settled_stages_are_counted_and_reported_up_to_date_and_never_decided(root: Path) -> None:
    loop = Loop(root)
    executor = ScriptedExecutor(loop.inbox, [("b", OK), ("d", OK)])
    outcome = loop.run(executor, NotingRecorder(), settled=("a", "c"))
    assert outcome.code == EXIT_OK
    assert executor.started == ["b", "d"]
    assert loop.finished() == [
        ("a", Status.SKIPPED, UP_TO_DATE),
        ("c", Status.SKIPPED, UP_TO_DATE),
        ("b", Status.RAN, NEVER_RUN),
        ("d", Status.RAN, NEVER_RUN),
    ]
    assert {loop.graph.label(sid) for sid in outcome.sealed} == {"a", "c"}  # (their seal is kept)
    done = loop.events[-1]
    assert isinstance(done, BuildFinished) and (done.ran, done.skipped) == (2, 2)
    started = [e for e in loop.events if isinstance(e, StageStarted)]
    assert [(e.index, e.total) for e in started] == [(1, 2), (2, 2)]


def test_an_interrupt_while_settled_stages_are_reported_ends_the_build_as_one(root: Path) -> None:
    """Ctrl-C as the first settled stage is reported: the build ends as any
    interrupted build does, its summary (and history) included."""
    loop = Loop(root)
    loop.interrupt_at = "a"
    executor = CancellableExecutor(loop.inbox, [])
    outcome = loop.run(executor, NotingRecorder(), settled=("a", "c"))
    assert outcome.interrupted and outcome.code == EXIT_INTERRUPTED
    assert executor.started == [] and executor.closed
    done = loop.events[-1]
    assert isinstance(done, BuildFinished) and done.interrupted
    assert (done.skipped, done.cancelled) == (2, 2)


def test_one_job_at_a_time_starts_the_next_only_after_a_result(root: Path) -> None:
    loop = Loop(root, jobs=1)
    executor = ScriptedExecutor(loop.inbox, [("a", OK), ("b", OK), ("c", OK), ("d", OK)])
    loop.run(executor, NotingRecorder())
    # After a, both b and c are ready; with equal paths, the first ready goes first.
    assert executor.started == ["a", "b", "c", "d"]


def test_a_failure_blocks_what_follows_and_stops_the_build(root: Path) -> None:
    loop = Loop(root)
    recorder = NotingRecorder()
    executor = ScriptedExecutor(loop.inbox, [("a", FAILED), ("b", OK)])
    outcome = loop.run(executor, recorder)
    assert outcome.code == EXIT_FAILED
    assert loop.statuses(outcome) == {"a": Status.FAILED, "b": Status.RAN, "c": Status.BLOCKED, "d": Status.CANCELLED}
    assert ("c", Status.BLOCKED, "upstream a failed") in loop.finished()
    assert ("d", Status.CANCELLED, "not started") in loop.finished()
    assert executor.started == ["a", "b"]  # d was ready once b ran, but the build was stopping
    assert recorder.rolled_back == ["a"]
    assert recorder.recorded == ["b"]
    failures = [e for e in loop.events if isinstance(e, StageFinished) and e.status is Status.FAILED]
    assert len(failures) == 2  # once when it failed, again at the end
    assert failures[0].detail == "exit status 1"
    assert failures[0].tail == ("boom",)


def test_keep_going_finishes_the_other_branch(root: Path) -> None:
    loop = Loop(root, keep_going=True)
    executor = ScriptedExecutor(loop.inbox, [("a", FAILED), ("b", OK), ("d", OK)])
    outcome = loop.run(executor, NotingRecorder())
    assert outcome.code == EXIT_FAILED
    assert loop.statuses(outcome) == {"a": Status.FAILED, "b": Status.RAN, "c": Status.BLOCKED, "d": Status.RAN}


def test_a_stage_whose_declared_output_is_missing_fails_and_is_rolled_back(root: Path) -> None:
    loop = Loop(root, keep_going=True)
    recorder = NotingRecorder(missing="b")
    executor = ScriptedExecutor(loop.inbox, [("a", OK), ("b", OK), ("c", OK)])
    outcome = loop.run(executor, recorder)
    assert loop.statuses(outcome) == {"a": Status.RAN, "b": Status.FAILED, "c": Status.RAN, "d": Status.BLOCKED}
    failed = next(e for e in loop.events if isinstance(e, StageFinished) and e.status is Status.FAILED)
    assert failed.detail == "declared output b.txt was not created"
    assert recorder.rolled_back == ["b"]


def test_a_plan_is_the_same_loop_with_the_dry_executor(root: Path) -> None:
    loop = Loop(root, plan=True)
    before = sorted((root / ".pivot").rglob("*"))
    outcome = loop.run(DryExecutor(loop.inbox), DryRecorder())
    assert outcome.code == EXIT_OK
    reasons = {loop.graph.label(sid): reason for sid, reason in outcome.reasons.items()}
    assert reasons == {"a": NEVER_RUN, "b": NEVER_RUN, "c": "upstream a will run", "d": "upstream b will run"}
    assert set(outcome.status.values()) == {Status.RAN}  # "ran": nothing did
    assert not (root / "a.txt").exists()
    assert sorted((root / ".pivot").rglob("*")) == before  # no journal, lockfile, history or cache


def test_stage_ids_in_the_outcome_are_the_graphs(root: Path) -> None:
    loop = Loop(root, plan=True)
    outcome = loop.run(DryExecutor(loop.inbox), DryRecorder())
    assert list(outcome.status) == [StageId("", "a"), StageId("", "b"), StageId("", "c"), StageId("", "d")]
