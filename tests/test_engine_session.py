"""The long-lived engine: one `Engine` loads a project once and builds it many
times, reloads it when a Pivotfile changes (keeping the last good graph while
the new one does not load), is cancelled from another thread, says which paths
a build reads, and builds with the job server and executor it is handed.
Real projects on disk, real processes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import PIVOTBUILD
from helpers import PAIR

from pivotbuild.build import engine as engine_module
from pivotbuild.build import session
from pivotbuild.build.admission import TokenPool
from pivotbuild.build.engine import Engine
from pivotbuild.build.executors.base import Executor, Inbox, Job
from pivotbuild.build.executors.local import LocalExecutor
from pivotbuild.build.options import BuildOptions
from pivotbuild.cache.outputs import OutputCache
from pivotbuild.errors import EXIT_INTERRUPTED, EXIT_OK, PivotfileError
from pivotbuild.events import BuildFinished, Event, StageFinished, StageStarted, Status

PIPELINE = PAIR

WITH_C = (
    PIPELINE
    + """
stage c:
    deps: b.txt
    outs: c.txt
    run: cp b.txt c.txt
"""
)


class Collect:
    """A reporter that keeps every event; `on_start` is called for each stage started."""

    def __init__(self, on_start: object = None) -> None:
        self.events: list[Event] = []
        self.on_start = on_start

    def handle(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, StageStarted) and callable(self.on_start):
            self.on_start(event)

    def close(self) -> None:
        pass

    def finished(self) -> dict[str, Status]:
        return {e.stage: e.status for e in self.events if isinstance(e, StageFinished)}

    def summary(self) -> BuildFinished:
        return [e for e in self.events if isinstance(e, BuildFinished)][-1]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "Pivotfile").write_text(PIPELINE)
    (tmp_path / "in.txt").write_text("one\n")
    return tmp_path


def options(root: Path, *targets: str, jobs: int = 2) -> BuildOptions:
    return BuildOptions(cwd=root, targets=targets, jobs=jobs)


def test_one_engine_loads_once_and_builds_many_times(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    real = session.load_compiled
    monkeypatch.setattr(session, "load_compiled", lambda *a: loads.append(a) or real(*a))
    seen = Collect()
    engine = Engine(seen)
    assert engine.build(options(root)) == EXIT_OK
    assert seen.finished() == {"a": Status.RAN, "b": Status.RAN}
    seen.clear()
    assert engine.build(options(root)) == EXIT_OK
    assert seen.finished() == {"a": Status.SKIPPED, "b": Status.SKIPPED}
    (root / "in.txt").write_text("two\n")
    seen.clear()
    assert engine.build(options(root)) == EXIT_OK
    assert seen.finished() == {"a": Status.RAN, "b": Status.RAN}
    assert (root / "b.txt").read_text() == "two\n"
    assert len(loads) == 1  # three builds, one load


def test_a_resident_engine_keeps_its_state_and_sees_another_builds_writes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []
    real = engine_module.StateStore
    monkeypatch.setattr(engine_module, "StateStore", lambda *a: opened.append(a) or real(*a))
    seen = Collect()
    engine = Engine(seen, resident=True)
    assert engine.build(options(root)) == EXIT_OK
    (root / "in.txt").write_text("two\n")
    seen.clear()
    assert engine.build(options(root)) == EXIT_OK
    assert seen.finished() == {"a": Status.RAN, "b": Status.RAN}
    assert len(opened) == 1  # the second build's state was the first's, kept in memory

    # Another pivotbuild (the command line, beside watch mode) builds meanwhile:
    # the engine reads the state it wrote instead of trusting its own.
    (root / "in.txt").write_text("three\n")
    r = subprocess.run([*PIVOTBUILD, "-s"], cwd=root, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    seen.clear()
    assert engine.build(options(root)) == EXIT_OK
    assert seen.finished() == {"a": Status.SKIPPED, "b": Status.SKIPPED}
    assert len(opened) == 2
    assert (root / "b.txt").read_text() == "three\n"


def test_reload_serves_the_edited_pivotfile_and_keeps_the_last_good_one_while_broken(root: Path) -> None:
    seen = Collect()
    engine = Engine(seen)
    assert engine.build(options(root)) == EXIT_OK
    (root / "Pivotfile").write_text(WITH_C)
    reloaded = engine.reload()
    assert reloaded.loaded and [s.name for s in reloaded.added] == ["c"]
    seen.clear()
    assert engine.build(options(root, "c")) == EXIT_OK
    assert seen.finished() == {"a": Status.SKIPPED, "b": Status.SKIPPED, "c": Status.RAN}

    (root / "Pivotfile").write_text(WITH_C + "\nstage broken\n    run: true\n")
    broken = engine.reload()
    assert broken.error is not None and not broken.loaded
    assert isinstance(broken.error, PivotfileError)
    assert broken.error.render().startswith("Pivotfile:17:13: error: expected ':'")  # located, as `check` shows it
    seen.clear()
    assert engine.build(options(root, "c")) == EXIT_OK  # the last good graph still builds
    assert seen.finished() == {"a": Status.SKIPPED, "b": Status.SKIPPED, "c": Status.SKIPPED}
    assert not engine.reload().loaded  # unchanged since it failed: not compiled again

    (root / "Pivotfile").write_text(PIPELINE)
    fixed = engine.reload()
    assert fixed.loaded and [s.name for s in fixed.removed] == ["c"]


def test_cancel_from_another_thread_stops_the_running_build(root: Path) -> None:
    (root / "Pivotfile").write_text("stage slow:\n    run: sleep 30\n")
    engine: Engine

    def cancel_soon(_: StageStarted) -> None:
        threading.Timer(0.2, engine.cancel).start()

    seen = Collect(cancel_soon)
    engine = Engine(seen)
    t0 = time.monotonic()
    assert engine.build(options(root)) == EXIT_INTERRUPTED
    assert time.monotonic() - t0 < 20  # the sleep was killed, not waited for
    assert seen.finished() == {"slow": Status.CANCELLED}
    assert seen.summary().interrupted
    engine.cancel()  # no build running: nothing to do


def test_reads_names_what_a_build_reads(root: Path) -> None:
    engine = Engine(Collect())
    engine.load(options(root))
    watched = engine.reads(["b"])
    assert str(root / "in.txt") in watched.deps
    assert str(root / "a.txt") in watched.deps  # b reads a's output: a hand edit must retrigger
    assert str(root / "Pivotfile") in watched.sources
    assert str(root / "b.txt") not in watched.deps


class CountingPool(TokenPool):
    """Our own token pool, noting the most tokens out at once."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.acquired = 0
        self.most = 0

    def try_acquire(self, n: int) -> bool:
        ok = super().try_acquire(n)
        if ok:
            self.acquired += n
            self.most = max(self.most, self.capacity - self.free)
        return ok


def test_the_job_server_handed_in_gives_the_tokens(root: Path) -> None:
    (root / "Pivotfile").write_text(
        "".join(f"stage s{i}:\n    outs: s{i}.txt\n    run: touch $@\n\n" for i in range(4))
    )
    pool = CountingPool(1)
    seen = Collect()
    # -j4 on the options, but the engine's job server has one token: it wins.
    assert Engine(seen, jobserver=pool).build(options(root, jobs=4)) == EXIT_OK
    assert pool.acquired == 4 and pool.most == 1 and pool.free == 1
    assert set(seen.finished().values()) == {Status.RAN}


def test_the_executor_handed_in_runs_the_stages(root: Path) -> None:
    started: list[str] = []

    def noting(root: Path, outputs: OutputCache, inbox: Inbox, cancel: threading.Event, *, store: bool) -> Executor:
        local = LocalExecutor(root, outputs, inbox, cancel, store=store)

        class Noting:
            def start(self, job: Job) -> None:
                started.append(job.label)
                local.start(job)

            def cancel(self) -> None:
                local.cancel()

            def close(self) -> None:
                local.close()

        return Noting()

    assert Engine(Collect(), executor=noting).build(options(root)) == EXIT_OK
    assert started == ["a", "b"]
    assert (root / "b.txt").read_text() == "one\n"


def test_an_executor_reporting_from_threads_of_its_own_runs_the_stages(root: Path) -> None:
    # As a Dask executor would: each job runs in a thread (stagework.run_stage,
    # blocking), and its lines and result reach the loop from that thread.
    from pivotbuild.build.executors.base import Done
    from pivotbuild.build.executors.lifeline import Lifeline
    from pivotbuild.build.executors.stagework import run_stage

    threads: set[str] = set()

    def threaded(root: Path, outputs: OutputCache, inbox: Inbox, cancel: threading.Event, *, store: bool) -> Executor:
        lifeline = Lifeline()

        def work(job: Job) -> None:
            threads.add(threading.current_thread().name)
            assert job.snap is not None
            result, captured = run_stage(
                job.stage,
                job.snap,
                job.label,
                root=root,
                environ=os.environ,
                outputs=outputs,
                known=job.known,
                store=store,
                cancel=cancel,
                put=inbox.put,
                started=lambda: 0,
                lifeline=lifeline,
            )
            inbox.done(Done(job, result, captured))

        class Threaded:
            def start(self, job: Job) -> None:
                threading.Thread(target=work, args=(job,), name=f"job {job.label}").start()

            def cancel(self) -> None:
                cancel.set()

            def close(self) -> None:
                lifeline.close()

        return Threaded()

    (root / "Pivotfile").write_text(WITH_C.replace("run: cp b.txt c.txt", "run: echo copying >&2; cp b.txt c.txt"))
    seen = Collect()
    assert Engine(seen, executor=threaded).build(options(root)) == EXIT_OK
    assert threads == {"job a", "job b", "job c"}
    assert seen.finished() == {"a": Status.RAN, "b": Status.RAN, "c": Status.RAN}
    assert (root / "c.txt").read_text() == "one\n"
    shown = [(type(e).__name__, getattr(e, "line", "")) for e in seen.events if getattr(e, "stage", "") == "c"]
    assert shown == [("StageStarted", ""), ("Log", "copying"), ("StageFinished", "")]


def test_watch_mode_builds_in_which_nothing_happened_leave_no_history(root: Path) -> None:
    engine = Engine(Collect(), resident=True)
    watching = BuildOptions(cwd=root, jobs=2, watch=True)
    history = root / ".pivot" / "history.jsonl"
    assert engine.build(watching) == EXIT_OK
    lines = history.read_text().splitlines()
    assert len(lines) == 1  # the build that ran a and b
    assert engine.build(watching) == EXIT_OK  # (as after a change that changed nothing)
    assert history.read_text().splitlines() == lines
    (root / "in.txt").write_text("two\n")
    assert engine.build(watching) == EXIT_OK
    assert len(history.read_text().splitlines()) == 2


def _after(engine: Engine) -> None:
    """What the build left for after its client's answer, run (as Residents.after runs it)."""
    assert engine.later is not None
    work, engine.later[:] = list(engine.later), []
    for item in work:
        item()


def test_a_server_s_engine_seals_after_the_answer_and_writes_the_seal_when_idle(root: Path) -> None:
    """Where a build server keeps it (`later`), the engine makes its seal
    after the build's answer (Engine.kept: build/kept.py), under the project lock,
    unless another process wrote the state since; it keeps it for the next
    build's fast check (`kept.get`) and writes it when told the server is
    idle (`kept.write`), unless a build or another process came first."""
    engine = Engine(Collect(), resident=True)
    engine.later = []
    sealed = root / ".pivot" / "seal"
    assert engine.build(options(root)) == EXIT_OK
    main, plan_id = str(root), engine.current()[0].plan_id
    assert not sealed.exists() and engine.later  # not yet: after the answer
    _after(engine)
    kept = engine.kept.get(main, plan_id)
    assert kept is not None and kept.state_unchanged() and not sealed.exists()  # kept, not yet written
    assert engine.kept.get(main, "another plan") is None
    engine.kept.write()
    assert sealed.exists()
    first = sealed.read_bytes()
    engine.kept.write()  # (nothing left to write)
    assert sealed.read_bytes() == first
    # A build that comes before the server is idle: its own seal replaces the
    # one kept, which is never written.
    (root / "in.txt").write_text("two\n")
    assert engine.build(options(root)) == EXIT_OK
    assert engine.kept.get(main, plan_id) is None
    _after(engine)
    second = engine.kept.get(main, plan_id)
    assert second is not None and second is not kept
    (root / "in.txt").write_text("three\n")
    assert engine.build(options(root)) == EXIT_OK
    _after(engine)
    engine.kept.write()
    assert sealed.read_bytes() != first
    first = sealed.read_bytes()
    # Another process's write before the seal is made, or before it is written: none.
    lockfile = root / "Pivotfile.lock"
    for when in ("made", "written"):
        (root / "in.txt").write_text(f"{when}\n")
        assert engine.build(options(root)) == EXIT_OK
        if when == "written":
            _after(engine)
        os.utime(lockfile, ns=(lockfile.stat().st_mtime_ns + 10**9,) * 2)  # as another process's write
        if when == "made":
            _after(engine)
            assert engine.kept.get(main, plan_id) is None
        engine.kept.write()
        assert sealed.read_bytes() == first  # left alone: that other build seals what it finds
    # A project whose lock another build holds: no seal, no wait, no error.
    (root / "in.txt").write_text("four\n")
    assert engine.build(options(root)) == EXIT_OK
    from pivotbuild.state.projectlock import ProjectLock

    with ProjectLock(root / ".pivot", wait=False, on_wait=print):
        _after(engine)
        assert engine.kept.get(main, plan_id) is None
    # And with nothing in between, the next one seals.
    (root / "in.txt").write_text("five\n")
    assert engine.build(options(root)) == EXIT_OK
    _after(engine)
    with ProjectLock(root / ".pivot", wait=False, on_wait=print):
        engine.kept.write()  # (busy: left unwritten, not waited for)
    assert sealed.read_bytes() == first
    (root / "in.txt").write_text("six\n")
    assert engine.build(options(root)) == EXIT_OK
    _after(engine)
    engine.kept.write()
    assert sealed.read_bytes() != first


def test_a_lockfile_removed_while_the_server_s_seal_is_made_is_never_sealed_as_absent(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client has its answer while the server makes the seal: a lockfile
    removed meanwhile (the project lock keeps out other pivotbuilds, not a
    person) must not be sealed as absent, or the next no-op would say every
    stage up to date with no lockfile at all."""
    from pivotbuild.build.recorder import Recorder

    engine = Engine(Collect(), resident=True)
    engine.later = []
    (root / "in.txt").write_text("two\n")
    assert engine.build(options(root)) == EXIT_OK
    main, plan_id = str(root), engine.current()[0].plan_id
    made = Recorder.new_seal

    def removed_meanwhile(self: Recorder, *args: object, **kwargs: object) -> object:
        (root / "Pivotfile.lock").unlink()
        return made(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Recorder, "new_seal", removed_meanwhile)
    _after(engine)
    assert engine.kept.get(main, plan_id) is None
    engine.kept.write()
    from pivotbuild.build import fastpath

    checked = fastpath.check(root, None, {}, [], engine.kept.get)
    assert checked is None or not checked.noop  # the next build decides, and writes the lockfile again


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_lockfile_changed_by_hand_as_a_build_seals_is_never_what_the_seal_vouches_for(
    root: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A build in its own process seals right after writing its lockfile,
    under the project lock, which keeps out other pivotbuilds but not a
    person: the seal vouches for the lockfile as the build wrote it
    (Records.digest), so one removed, or put back as it was a build ago
    (`git checkout`), in between is not trusted by the next no-op."""
    from pivotbuild.build import fastpath
    from pivotbuild.build.recorder import Recorder

    lock = root / "Pivotfile.lock"
    before = lock.read_bytes() if lock.exists() else None
    engine = Engine(Collect())
    (root / "in.txt").write_text("two\n")
    made = Recorder.new_seal

    def changed_meanwhile(self: Recorder, *args: object, **kwargs: object) -> object:
        if how == "removed" or before is None:
            lock.unlink()
        else:
            lock.write_bytes(before)
        return made(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Recorder, "new_seal", changed_meanwhile)
    assert engine.build(options(root)) == EXIT_OK
    assert (root / ".pivot" / "seal").exists()
    checked = fastpath.check(root, None, {}, [])
    assert checked is None or not checked.noop  # the next build decides (and writes the lockfile again)
