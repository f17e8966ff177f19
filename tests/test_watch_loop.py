"""The watch loop in-process (watch/loop.py): real projects and builds, but the
changes come from a `FakeSource` the test drives (it calls the loop's sink as
watchfiles would), and the events go to a recording reporter.  No timing: a
sink call filters (and tells a running build) before it returns, and
`settled` waits until the loop has served everything handed to it before.
Then what the loop shows (watch/reporting.py's `QuietBuilds`) and what the
agent server is told (watch/eventlog.py's `EventLog`), as units."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from conftest import Project
from helpers import CHAIN, runs, src, wait_until

from pivotbuild.build.engine import Engine, Preloaded
from pivotbuild.build.options import BuildOptions
from pivotbuild.events import (
    BuildFinished,
    BuildStarted,
    Event,
    Log,
    Message,
    Reporter,
    StageFinished,
    StageStarted,
    StageState,
    State,
    Status,
    Watching,
)
from pivotbuild.rpc.agent import BUSY, RpcError
from pivotbuild.watch import agent as agent_module
from pivotbuild.watch.agent import WatchAgent
from pivotbuild.watch.changes import Sink
from pivotbuild.watch.eventlog import EventLog
from pivotbuild.watch.loop import WatchLoop
from pivotbuild.watch.reporting import QuietBuilds

# How long a test waits for the loop (s): generous, for a loaded machine.
TIMEOUT_S = 20.0


class FakeSource:
    """A change source the test drives: records what the loop asked to watch."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.sink: Sink | None = None
        self.closed = False

    def watch(self, roots: Sequence[str], sink: Sink) -> None:
        self.calls.append(tuple(roots))
        self.sink = sink

    def close(self) -> None:
        self.closed = True

    def change(self, *paths: Path) -> None:
        """What watchfiles would hand on: a batch of changed paths."""
        assert self.sink is not None
        self.sink(frozenset(str(p) for p in paths))


class Recording:
    """A reporter that keeps the events; `take` hands them out in order, waiting for more."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._taken = 0

    def handle(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def close(self) -> None:
        pass

    def take(self, until: type) -> list[Event]:
        """The events not taken yet, up to and including the next `until`."""
        with self._cond:
            found = self._cond.wait_for(
                lambda: any(isinstance(e, until) for e in self.events[self._taken :]), TIMEOUT_S
            )
            assert found, f"no {until.__name__} among {self.events[self._taken :]}"
            end = next(i for i in range(self._taken, len(self.events)) if isinstance(self.events[i], until)) + 1
            taken, self._taken = self.events[self._taken : end], end
            return taken

    def rest(self) -> list[Event]:
        """The events not taken yet (without waiting)."""
        with self._cond:
            return self.events[self._taken :]

    def next_build(self) -> dict[str, Status]:
        """The next build shown, up to the Watching that follows it: stage -> status."""
        seen = self.take(Watching)
        assert isinstance(seen[0], BuildStarted), seen
        assert sum(isinstance(e, BuildFinished) for e in seen) == 1, seen
        return {e.stage: e.status for e in seen if isinstance(e, StageFinished)}


class CountingEngine(Engine):
    """The real engine, counting the builds it runs (shown or not)."""

    def __init__(self, reporter: Reporter, *, resident: bool = False) -> None:
        super().__init__(reporter, resident=resident)
        self.builds = 0

    def build(
        self, options: BuildOptions, cancel: threading.Event | None = None, preloaded: Preloaded | None = None
    ) -> int:
        self.builds += 1
        return super().build(options, cancel, preloaded)


class Watched:
    """A WatchLoop on a project, its `run` in a thread."""

    def __init__(
        self,
        p: Project,
        *,
        targets: tuple[str, ...] = (),
        restart: bool = False,
        also: Sequence[Reporter] = (),
        every: Sequence[Reporter] = (),
        all_pipelines: bool = False,
    ) -> None:
        self.p = p
        self.reporter = Recording()
        self.source = FakeSource()
        options = BuildOptions(cwd=p.root, targets=targets, watch=True, jobs=2, all_pipelines=all_pipelines)
        self.loop = WatchLoop(
            self.reporter, options, self.source, restart=restart, also=also, every=every, engine=CountingEngine
        )
        self.codes: list[int] = []
        self.thread = threading.Thread(target=lambda: self.codes.append(self.loop.run()), daemon=True)

    @property
    def builds(self) -> int:
        engine = self.loop.engine
        assert isinstance(engine, CountingEngine)
        return engine.builds

    def start(self) -> Watched:
        self.thread.start()
        return self

    def path(self, rel: str) -> Path:
        return self.p.root / rel

    def settled(self) -> None:
        """Wait until the loop has served everything handed to it before this
        call.  (A question is answered before the builds of the batch it came
        in; the second is asked once the first is answered, so in a later batch.)"""
        self.loop.between_builds(lambda: None, TIMEOUT_S)
        self.loop.between_builds(lambda: None, TIMEOUT_S)

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive()


@pytest.fixture
def watched(project: Project) -> Iterator[Callable[..., Watched]]:
    """Start a WatchLoop on the project (its Pivotfile and files written
    first); each is stopped afterwards (and must end with 0)."""
    started: list[Watched] = []

    def start(**kwargs: object) -> Watched:
        w = Watched(project, **kwargs).start()  # type: ignore[arg-type]
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
        assert w.codes == [0]
        assert w.source.closed


@pytest.fixture
def chain_loop(chain: Project, watched: Callable[..., Watched]) -> Watched:
    """CHAIN (a -> b, c) watched in-process, its first build done."""
    w = watched()
    assert w.reporter.next_build() == {"a": Status.RAN, "b": Status.RAN, "c": Status.RAN}
    return w


# A stage that waits while `hold` exists, once it has touched `started`, writing
# into a directory of its own; `after` reads what it writes.
HELD = """
stage slow:
    deps: in.txt
    outs: out/slow.txt
    run: mkdir -p out; touch started; while [ -e hold ]; do sleep 0.02; done; cp $< $@

stage after:
    deps: out/slow.txt
    outs: after.txt
    run: cp $< $@
"""


def held(w: Watched) -> None:
    """Wait for stage `slow` to be running (and waiting on `hold`)."""
    wait_until(w.path("started").exists, TIMEOUT_S, "stage slow to start")


def held_loop(project: Project, watched: Callable[..., Watched]) -> Watched:
    """HELD watched in-process, its first build running `slow`, held."""
    project.pivotfile(HELD)
    project.write("in.txt", "one\n")
    project.write("hold", "")
    w = watched()
    held(w)
    return w


# -- what the loop watches and builds ------------------------------------------------------


def test_it_watches_directories_covering_every_dep(chain: Project, chain_loop: Watched) -> None:
    (roots,) = chain_loop.source.calls
    watchset = chain_loop.loop.watchset
    assert watchset is not None
    deps = {str(chain.root / d) for d in ("in.txt", "other.txt", "build/a.txt")}
    assert watchset.deps == deps
    for path in (*deps, str(chain.root / "Pivotfile")):
        assert any(path.startswith(root + "/") for root in roots), (path, roots)
    (watching,) = [e for e in chain_loop.reporter.events if isinstance(e, Watching)]
    assert watching.files == 4  # three deps and the Pivotfile


def test_an_unrelated_path_starts_nothing(chain: Project, chain_loop: Watched) -> None:
    builds = chain_loop.builds
    chain.write("notes.txt", "unrelated\n")
    chain.write(".pivot/scratch", "state\n")
    chain_loop.source.change(chain.root / "notes.txt", chain.root / ".pivot" / "scratch")
    chain_loop.settled()
    assert chain_loop.builds == builds
    assert chain_loop.reporter.rest() == []


def test_a_changed_dep_builds_what_it_affects(chain: Project, chain_loop: Watched) -> None:
    chain.write("in.txt", "changed\n")
    chain_loop.source.change(chain.root / "in.txt")
    assert chain_loop.reporter.next_build() == {"a": Status.RAN, "b": Status.RAN, "c": Status.SKIPPED}
    assert runs(chain)[3:] == ["a", "b"]


def test_a_build_in_which_nothing_ran_is_not_shown(chain: Project, chain_loop: Watched) -> None:
    builds = chain_loop.builds
    chain_loop.source.change(chain.root / "in.txt", chain.root / "build" / "a.txt")  # as they were
    chain_loop.settled()
    assert chain_loop.builds == builds + 1  # built, to find nothing to do
    assert chain_loop.reporter.rest() == []


def test_a_broken_pivotfile_is_reported_and_the_last_good_graph_kept(chain: Project, chain_loop: Watched) -> None:
    graph = chain_loop.loop.graph()
    builds = chain_loop.builds
    chain.pivotfile(src(CHAIN) + "\nstage d\n    run: true\n")
    chain_loop.source.change(chain.root / "Pivotfile")
    seen = chain_loop.reporter.take(Watching)
    messages = [e for e in seen if isinstance(e, Message)]
    assert [m.level for m in messages] == ["located", "error"], seen
    assert messages[0].text.startswith("Pivotfile:17:8: error: ")
    assert messages[1].text.endswith("; building with the last good Pivotfiles until this is fixed")
    assert "run again" not in messages[1].text
    assert chain_loop.loop.graph() is graph
    assert chain_loop.builds == builds

    chain.write("in.txt", "changed\n")
    chain_loop.source.change(chain.root / "in.txt")
    assert chain_loop.reporter.next_build() == {"a": Status.RAN, "b": Status.RAN, "c": Status.SKIPPED}

    chain.pivotfile(src(CHAIN) + "\nstage d:\n    deps: other.txt\n    outs: d.txt\n    run: cp $< $@\n")
    chain_loop.source.change(chain.root / "Pivotfile")
    assert chain_loop.reporter.next_build() == {
        "a": Status.SKIPPED,
        "b": Status.SKIPPED,
        "c": Status.SKIPPED,
        "d": Status.RAN,
    }
    assert "d" in [chain_loop.loop.graph().label(s) for s in chain_loop.loop.graph().order()]


def test_a_target_gone_from_the_pivotfile_is_reported_once(chain: Project, watched: Callable[..., Watched]) -> None:
    w = watched(targets=("c",))
    assert w.reporter.next_build() == {"c": Status.RAN}
    builds = w.builds
    chain.pivotfile(CHAIN.replace("stage c:", "stage d:"))
    w.source.change(chain.root / "Pivotfile")
    seen = w.reporter.take(Watching)
    assert [type(e) for e in seen] == [Message, Watching], seen
    assert isinstance(seen[0], Message) and "unknown target 'c'" in seen[0].text
    assert seen[0].text.endswith("; waiting for a change")
    assert w.builds == builds
    chain.pivotfile(CHAIN.replace("echo c >>", "echo c2 >>"))  # back, with another command
    w.source.change(chain.root / "Pivotfile")
    assert w.reporter.next_build() == {"c": Status.RAN}
    assert runs(chain)[-1] == "c2"


def test_with_all_a_new_directory_is_looked_into_for_pivotfiles(
    chain: Project, watched: Callable[..., Watched]
) -> None:
    w = watched(all_pipelines=True)
    assert w.reporter.next_build() == {"a": Status.RAN, "b": Status.RAN, "c": Status.RAN}
    builds = w.builds
    chain.write("plain/notes.txt", "no Pivotfile here\n")
    chain.write(".hidden/Pivotfile", "stage h:\n    run: true\n")  # --all passes hidden directories over
    w.source.change(chain.root / "plain", chain.root / ".hidden")
    w.settled()
    assert w.builds == builds
    chain.write("sub/Pivotfile", "stage s:\n    outs: s.txt\n    run: echo s > $@\n")
    w.source.change(chain.root / "sub")  # all the notifier said: it saw the directory before watching it
    assert w.reporter.next_build() == {
        "a": Status.SKIPPED,
        "b": Status.SKIPPED,
        "c": Status.SKIPPED,
        "sub:s": Status.RAN,
    }


# -- the agent's side: builds asked for, cancelling ------------------------------------------


def test_a_requested_build_is_shown_and_force_runs_the_stages(chain: Project, chain_loop: Watched) -> None:
    chain_loop.loop.request_build(None, False)  # nothing to do, but asked for: shown
    assert chain_loop.reporter.next_build() == {"a": Status.SKIPPED, "b": Status.SKIPPED, "c": Status.SKIPPED}
    chain_loop.loop.request_build(["c"], True)
    assert chain_loop.reporter.next_build() == {"c": Status.RAN}
    assert runs(chain)[3:] == ["c"]


def test_cancel_kills_the_running_stages_and_watching_goes_on(
    project: Project, watched: Callable[..., Watched]
) -> None:
    w = held_loop(project, watched)
    assert w.loop.building
    assert w.loop.cancel() is True
    seen = w.reporter.take(Watching)
    assert {e.stage: e.status for e in seen if isinstance(e, StageFinished)} == {
        "slow": Status.CANCELLED,
        "after": Status.CANCELLED,
    }
    assert w.loop.cancel() is False  # nothing runs now
    (project.root / "hold").unlink()
    w.loop.request_build(None, False)
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.RAN}


# -- changes during a build --------------------------------------------------------------------


def test_a_dep_changed_during_a_build_stops_new_starts_then_builds_again(
    project: Project, watched: Callable[..., Watched]
) -> None:
    w = held_loop(project, watched)
    project.write("in.txt", "two\n")
    w.source.change(w.path("in.txt"))  # told to the running build before this returns
    (project.root / "hold").unlink()
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.CANCELLED}
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.RAN}
    assert (project.root / "after.txt").read_text() == "two\n"


def test_a_dep_saved_unchanged_during_a_build_does_not_stop_it(
    project: Project, watched: Callable[..., Watched]
) -> None:
    w = held_loop(project, watched)
    project.write("in.txt", "one\n")  # an editor's save of what was there
    w.source.change(w.path("in.txt"))
    (project.root / "hold").unlink()
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.RAN}
    w.settled()
    assert w.reporter.rest() == []


def test_the_builds_own_outputs_and_their_directories_do_not_stop_it(
    project: Project, watched: Callable[..., Watched]
) -> None:
    w = held_loop(project, watched)
    w.source.change(w.path("out"), w.path("out/slow.txt"))  # the directory made for slow's output
    (project.root / "hold").unlink()
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.RAN}
    w.settled()
    assert w.reporter.rest() == []  # the build that followed, to see them, was not shown


# -- QuietBuilds ---------------------------------------------------------------------------


def build_events(*finished: StageFinished, interrupted: bool = False) -> list[Event]:
    counts = {s: sum(f.status is s for f in finished) for s in Status}
    return [
        BuildStarted(len(finished), 2),
        *finished,
        BuildFinished(
            ran=counts[Status.RAN],
            skipped=counts[Status.SKIPPED],
            restored=counts[Status.RESTORED],
            failed=counts[Status.FAILED],
            blocked=counts[Status.BLOCKED],
            cancelled=counts[Status.CANCELLED],
            duration_s=0.1,
            interrupted=interrupted,
        ),
    ]


def skipped(stage: str) -> StageFinished:
    return StageFinished(stage, Status.SKIPPED, "up to date", 0.0)


def quiet_builds() -> tuple[QuietBuilds, Recording]:
    inner = Recording()
    quiet = QuietBuilds(inner)
    for event in build_events(skipped("a")):  # the first build: shown whatever happens
        quiet.handle(event)
    assert len(inner.events) == 3
    quiet.shown = False  # (as the loop does once it said it is watching)
    return quiet, inner


def test_quiet_builds_drops_a_build_in_which_nothing_happened() -> None:
    quiet, inner = quiet_builds()
    for event in build_events(skipped("a"), skipped("b")):
        quiet.handle(event)
    assert len(inner.events) == 3
    assert quiet.shown is False


@pytest.mark.parametrize(
    "notable",
    [
        StageStarted("b", 1, 1, "dep changed"),
        Log("b", "stdout", "hello"),
        StageFinished("b", Status.RESTORED, "dep changed", 0.0),
        StageFinished("b", Status.FAILED, "dep changed", 0.0, "exit status 1"),
        Message("a warning", "warning"),
    ],
)
def test_quiet_builds_shows_a_build_once_something_happens_in_it(notable: Event) -> None:
    quiet, inner = quiet_builds()
    started, first, finished = build_events(skipped("a"))
    for event in (started, first, notable, finished):
        quiet.handle(event)
    assert inner.events[3:] == [started, first, notable, finished]  # in order, the held ones first
    assert quiet.shown is True


def test_quiet_builds_shows_an_interrupted_build_and_one_asked_for() -> None:
    quiet, inner = quiet_builds()
    for event in build_events(skipped("a"), interrupted=True):
        quiet.handle(event)
    assert len(inner.events) == 6
    quiet.show_next()
    for event in build_events(skipped("a")):
        quiet.handle(event)
    assert len(inner.events) == 9
    for event in build_events(skipped("a")):  # only the next
        quiet.handle(event)
    assert len(inner.events) == 9


def test_quiet_builds_remembers_a_message_across_a_build_not_shown() -> None:
    quiet, inner = quiet_builds()
    quiet.handle(Message("1 error in Pivotfile", "error"))  # between builds: shown at once
    for event in build_events(skipped("a")):
        quiet.handle(event)
    assert quiet.shown is True  # the loop says it is watching again, below the message
    quiet.handle(Watching(4))
    assert isinstance(inner.events[-1], Watching)
    assert quiet.shown is True  # (the loop resets it, not the Watching it sends)


# -- EventLog ------------------------------------------------------------------------------


def test_the_event_log_numbers_the_public_events_for_since() -> None:
    log = EventLog(kept=3)
    started, finished = build_events()
    for event in (started, StageState("a", State.PENDING), Message("hi"), finished, Watching(2)):
        log.handle(event)
    assert log.since(0) == {
        "events": [started.to_json(), finished.to_json(), Watching(2).to_json()],
        "cursor": 3,
    }
    assert log.since(2) == {"events": [Watching(2).to_json()], "cursor": 3}
    assert log.since(3) == {"events": [], "cursor": 3}
    assert log.since(7) == {"events": [], "cursor": 3}
    start = StageStarted("a", 1, 1, "never run")
    log.handle(start)
    log.handle(StageStarted("a", 1, 1, "flaky", attempt=2))  # a retry: not public
    # Three kept: a client further behind is answered from the oldest kept.
    assert log.since(0)["events"] == [finished.to_json(), Watching(2).to_json(), start.to_json()]
    assert log.since(0)["cursor"] == 4


def test_the_event_log_counts_and_states_a_failure_repeated_once() -> None:
    log = EventLog()
    assert log.state("a") == ("unknown", None)
    failure = StageFinished("a", Status.FAILED, "never run", 0.1, "exit status 1")
    log.handle(BuildStarted(3, 2))
    assert log.building is True
    log.handle(StageState("a", State.PENDING))
    assert log.state("a") == ("pending", None)
    log.handle(StageStarted("a", 1, 2, "never run"))
    assert log.state("a") == ("running", "never run")
    log.handle(failure)
    log.handle(StageFinished("b", Status.BLOCKED, "upstream a failed", 0.0))
    log.handle(skipped("c"))
    log.handle(failure)  # the end-of-build repeat
    log.handle(BuildFinished(0, 1, 0, 1, 1, 0, 0.2))
    assert log.building is False
    counts = log.counts()
    assert counts["stages"] == 3
    assert (counts["failed"], counts["blocked"], counts["skipped"], counts["ran"]) == (1, 1, 1, 0)
    assert log.state("a") == ("failed", "never run")
    assert log.state("b") == ("blocked", "upstream a failed")
    events = log.since(0)["events"]
    assert [e["event"] for e in events].count("stage_finished") == 3


def test_a_bug_in_the_change_sources_thread_is_raised_in_the_loops(
    chain: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource()
    options = BuildOptions(cwd=chain.root, watch=True, jobs=2)
    loop = WatchLoop(Recording(), options, source)
    loop.start()

    def broken(path: str) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(type(loop.watchset), "matches", lambda self, path: broken(path))
    source.change(chain.root / "in.txt")  # (as from the notifier's thread: it must not die silently)
    with pytest.raises(Exception, match=r"in the change source's thread: RuntimeError\('a bug'\)"):
        loop.run()
    assert source.closed


# -- what the agent asks during a build ------------------------------------------------------

# HELD, and a stage the agent's builds do not read.
HELD_AND_C = (
    HELD
    + """
stage c:
    deps: other.txt
    outs: c.txt
    run: cp $< $@
"""
)


def agent_build_held(project: Project, watched: Callable[..., Watched]) -> Watched:
    """HELD_AND_C watched and built, then a forced build of `after` asked for
    (as an agent asks), its stage `slow` running, held."""
    project.pivotfile(HELD_AND_C)
    project.write("in.txt", "one\n")
    project.write("other.txt", "one\n")
    w = watched()
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.RAN, "c": Status.RAN}
    w.settled()
    (project.root / "started").unlink()
    project.write("hold", "")
    w.loop.request_build(["after"], True)
    held(w)
    return w


def test_an_agents_build_is_not_stopped_by_a_change_it_does_not_read(
    project: Project, watched: Callable[..., Watched]
) -> None:
    w = agent_build_held(project, watched)
    project.write("other.txt", "two\n")
    w.source.change(w.path("other.txt"))
    (project.root / "hold").unlink()
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.RAN}  # not stopped halfway
    assert w.reporter.next_build() == {"slow": Status.SKIPPED, "after": Status.SKIPPED, "c": Status.RAN}


def test_an_agents_build_stopped_by_a_change_it_reads_is_built_again(
    project: Project, watched: Callable[..., Watched]
) -> None:
    w = agent_build_held(project, watched)
    project.write("in.txt", "two\n")
    w.source.change(w.path("in.txt"))
    (project.root / "hold").unlink()
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.CANCELLED}
    seen = w.reporter.take(Watching)  # the change's build, then the one asked for, again
    starts = [i for i, e in enumerate(seen) if isinstance(e, BuildStarted)]
    assert len(starts) == 2, seen
    builds = [seen[starts[0] : starts[1]], seen[starts[1] :]]
    finished = [{e.stage: e.status for e in b if isinstance(e, StageFinished)} for b in builds]
    assert finished == [
        {"slow": Status.RAN, "after": Status.RAN, "c": Status.SKIPPED},
        {"slow": Status.RAN, "after": Status.RAN},
    ]
    assert (project.root / "after.txt").read_text() == "two\n"


def agent_of(w: Watched, log: EventLog) -> WatchAgent:
    return WatchAgent(w.loop, log)


def test_explain_during_a_build_answers_for_that_build_or_waits_for_its_end(
    project: Project, watched: Callable[..., Watched], monkeypatch: pytest.MonkeyPatch
) -> None:
    project.pivotfile(HELD_AND_C)
    project.write("in.txt", "one\n")
    project.write("other.txt", "one\n")
    log = EventLog()
    w = watched(targets=("c",), also=[log], every=[log.every])
    assert w.reporter.next_build() == {"c": Status.RAN}
    agent = agent_of(w, log)
    w.loop.request_build(["after"], False)  # slow and after run: the log has them as ran
    assert w.reporter.next_build() == {"slow": Status.RAN, "after": Status.RAN}
    (project.root / "started").unlink()
    project.write("hold", "")
    w.loop.request_build(["slow"], True)
    held(w)
    assert agent.explain("slow") == {"will_run": True, "reason": "forced"}  # this build's decision
    monkeypatch.setattr(agent_module, "_ANSWER_S", 0.3)
    with pytest.raises(RpcError) as busy:  # after: not in this build; asked between builds, after it
        agent.explain("after")
    assert busy.value.code == BUSY
    monkeypatch.setattr(agent_module, "_ANSWER_S", TIMEOUT_S)
    answered: list[object] = []
    asking = threading.Thread(target=lambda: answered.append(agent.explain("after")))
    asking.start()
    (project.root / "hold").unlink()
    asking.join(TIMEOUT_S)
    assert answered == [{"will_run": False, "reason": None}]  # not the earlier build's "ran"
