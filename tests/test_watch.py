"""`pivotbuild -w` end to end: the real command watching a temporary project,
edits made to it, and what the watcher builds and says (CLI.md, "Watch mode").

Each test starts the watcher in its own session (`Watcher`), reads its
stdout and stderr from threads, and waits for what it says (an event, a line)
with a generous timeout; it syncs on the `watching` event before editing.
Where a test must show that nothing happens, it waits `QUIET_S` after a later
event it waited for, or after the watcher's own quiet period.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import PIVOTBUILD, Project
from helpers import CHAIN, SUMMARY, hung_pid, locked, read, runs, src, wait_gone, wait_until

# A short debounce (ms): the tests' edits are single writes.
DEBOUNCE = ("--debounce", "20")
# How long a test waits for something the watcher should do (s): generous, for a loaded machine.
EVENT_TIMEOUT_S = 20.0
# How long a test waits to show that nothing more happens (s): many times
# the debounce and a no-op build, so a build that would follow would have started.
QUIET_S = 1.0

Events = list[dict[str, Any]]


class Watcher:
    """`pivotbuild -w --debounce 20 ARGS` running in a project, in a session of
    its own; its stdout and stderr lines are read into queues by threads."""

    def __init__(self, p: Project, args: tuple[str, ...]) -> None:
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [*PIVOTBUILD, "-w", *DEBOUNCE, *args],
            cwd=p.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.err_lines: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out.put, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err_lines.append, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream: IO[str], put: Callable[[str | None], None], until_none: bool) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        if until_none:
            put(None)  # (the end, for `line`)

    def err(self) -> str:
        return "\n".join(self.err_lines)

    def line(self, timeout: float = EVENT_TIMEOUT_S) -> str:
        """The next stdout line."""
        try:
            line = self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing on stdout for {timeout}s; stderr:\n{self.err()}") from None
        if line is None:
            self.proc.wait(timeout=EVENT_TIMEOUT_S)
            raise AssertionError(f"pivotbuild -w exited ({self.proc.returncode}); stderr:\n{self.err()}")
        return line

    def until(self, name: str) -> Events:
        """The `--json` events up to and including the next one called `name`."""
        seen: Events = []
        while not seen or seen[-1]["event"] != name:
            seen.append(json.loads(self.line()))
        return seen

    def next_build(self) -> dict[str, str]:
        """The next build shown, up to the `watching` that follows it: stage -> status."""
        seen = self.until("watching")
        names = [e["event"] for e in seen]
        assert names.count("build_started") == 1 and names.count("build_finished") == 1, seen
        assert names[0] == "build_started", seen
        done: dict[str, str] = {}
        for e in seen:
            if e["event"] == "stage_finished":
                assert e["stage"] not in done, f"{e['stage']} finished twice: {seen}"
                done[e["stage"]] = e["status"]
        return done

    def quiet(self, seconds: float = QUIET_S) -> None:
        """Nothing more is said on stdout for `seconds`."""
        with contextlib.suppress(queue.Empty):
            line = self.out.get(timeout=seconds)
            raise AssertionError(f"the watcher said {line!r}, expected nothing")

    def wait_err(self, text: str) -> None:
        """Wait for `text` on stderr (read by a thread of its own: it may come
        after what was said on stdout later)."""
        try:
            wait_until(lambda: text in self.err(), EVENT_TIMEOUT_S, f"{text!r} on stderr")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; stderr:\n{self.err()}") from None

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send `sig` (Ctrl-C by default) and return the exit status."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=EVENT_TIMEOUT_S)
        for thread in self._threads:
            thread.join(EVENT_TIMEOUT_S)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for thread in self._threads:
            thread.join(EVENT_TIMEOUT_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def watch(project: Project) -> Iterator[Callable[..., Watcher]]:
    """Start `pivotbuild -w ARGS` in the project; whatever is left of it (and of
    a stage that wrote its pid to a *.pid file) is killed afterwards."""
    started: list[Watcher] = []

    def start(*args: str) -> Watcher:
        watcher = Watcher(project, args)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.close()
    for pid_file in project.root.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture
def chain_watch(chain: Project, watch: Callable[..., Watcher]) -> Watcher:
    """CHAIN (a -> b, c) watched with --json, its first build done and the
    build that follows it (for build/a.txt, which it wrote) over too: a change
    seen during that one would stop it, splitting the next build in two."""
    w = watch("--json")
    assert w.next_build() == {"a": "ran", "b": "ran", "c": "ran"}
    w.quiet()
    return w


# A stage that waits while the file `hold` exists, once it has touched `started`;
# `after` reads what it writes.
SLOW = """
stage slow:
    deps: in.txt
    outs: slow.txt
    run: touch started; while [ -e hold ]; do sleep 0.02; done; cp $< $@; echo slow >> runs.log

stage after:
    deps: slow.txt
    outs: after.txt
    run: cp $< $@; echo after >> runs.log
"""


def start_held(p: Project, w: Watcher) -> None:
    """Start a build of SLOW (first built) in which `slow` waits on `hold`, and
    wait for it to be waiting."""
    assert w.next_build() == {"slow": "ran", "after": "ran"}
    (p.root / "started").unlink()
    p.write("hold", "")
    p.write("in.txt", "two\n")
    wait_until((p.root / "started").exists, EVENT_TIMEOUT_S, "stage slow to start")


# -- what a change builds ----------------------------------------------------------------


def test_an_edit_rebuilds_exactly_the_stages_it_affects(chain: Project, chain_watch: Watcher) -> None:
    chain.write("in.txt", "changed\n")
    assert chain_watch.next_build() == {"a": "ran", "b": "ran", "c": "skipped"}
    assert runs(chain)[3:] == ["a", "b"]
    assert read(chain, "b.txt") == "CHANGED\n"


def test_the_builds_own_outputs_do_not_start_a_build(chain: Project, chain_watch: Watcher) -> None:
    # build/a.txt, written by a, is b's dep: seeing it written started no build
    # shown (chain_watch waited for that).
    chain.write("other.txt", "unrelated\n")
    assert chain_watch.next_build() == {"a": "skipped", "b": "skipped", "c": "ran"}
    chain_watch.quiet()
    assert runs(chain)[3:] == ["c"]


def test_a_rewrite_with_the_same_contents_runs_nothing_and_shows_nothing(chain: Project, chain_watch: Watcher) -> None:
    chain.write("in.txt", "hello\n")  # as it was
    chain_watch.quiet()
    chain.write("other.txt", "changed\n")  # a later change: the one build shown
    assert chain_watch.next_build() == {"a": "skipped", "b": "skipped", "c": "ran"}
    chain_watch.quiet()
    assert runs(chain)[3:] == ["c"]


def test_a_new_file_matching_a_glob_dep_rebuilds_its_stage(project: Project, watch: Callable[..., Watcher]) -> None:
    project.pivotfile("""
        stage all:
            deps: src/*.txt
            outs: all.txt
            run: cat src/*.txt > $@
        """)
    project.write("src/one.txt", "one\n")
    w = watch("--json")
    assert w.next_build() == {"all": "ran"}
    project.write("src/two.txt", "two\n")
    assert w.next_build() == {"all": "ran"}
    assert read(project, "all.txt") == "one\ntwo\n"


def test_an_edit_to_a_py_stages_code_rebuilds_it_and_a_comment_does_not(
    project: Project, watch: Callable[..., Watcher]
) -> None:
    project.pivotfile("stage s:\n    outs: s.txt\n    py: steps:run\n")
    project.write("steps.py", "from helper import word\n\ndef run(ctx):\n    open(ctx.outs[0], 'w').write(word())\n")
    project.write("helper.py", "def word():\n    return 'one'\n")
    w = watch("--json")
    assert w.next_build() == {"s": "ran"}
    project.write("helper.py", "def word():\n    return 'two'\n")
    assert w.next_build() == {"s": "ran"}
    assert read(project, "s.txt") == "two"
    project.write("helper.py", "def word():  # a comment\n    return 'two'\n")
    w.quiet()  # (the build it starts runs nothing, and shows nothing)
    project.write("other.py", "def word():\n    return 'three'\n")
    project.write("steps.py", "from other import word\n\ndef run(ctx):\n    open(ctx.outs[0], 'w').write(word())\n")
    assert w.next_build() == {"s": "ran"}
    project.write("other.py", "def word():\n    return 'four'\n")  # (reached since the last build: watched now)
    assert w.next_build() == {"s": "ran"}
    assert read(project, "s.txt") == "four"


def test_a_deleted_dep_is_reported_and_recreating_it_rebuilds(chain: Project, chain_watch: Watcher) -> None:
    (chain.root / "in.txt").unlink()
    seen = chain_watch.until("watching")
    assert [e["event"] for e in seen] == ["watching"], seen  # no build: an input is missing
    chain_watch.wait_err("; waiting for a change")
    assert "in.txt" in chain_watch.err()
    assert "Traceback" not in chain_watch.err()
    chain.write("in.txt", "back\n")
    assert chain_watch.next_build() == {"a": "ran", "b": "ran", "c": "skipped"}
    assert read(chain, "b.txt") == "BACK\n"


def watching_all(project: Project, watch: Callable[..., Watcher]) -> Watcher:
    """A project of one stage, c, watched with --all, its first build done."""
    project.pivotfile("""
        stage c:
            deps: other.txt
            outs: c.txt
            run: cp $< $@
        """)
    project.write("other.txt", "other\n")
    w = watch("--json", "--all")
    assert w.next_build() == {"c": "ran"}
    return w


def test_with_all_a_new_pivotfile_in_a_subdirectory_joins(project: Project, watch: Callable[..., Watcher]) -> None:
    w = watching_all(project, watch)
    project.write("sub/x.txt", "x\n")
    project.pivotfile(
        """
        stage s:
            deps: x.txt
            outs: s.txt
            run: cp $< $@
        """,
        "sub/Pivotfile",
    )
    assert w.next_build() == {"c": "skipped", "sub:s": "ran"}
    assert read(project, "sub/s.txt") == "x\n"


def test_with_all_a_directory_moved_in_with_a_pivotfile_joins(
    project: Project, watch: Callable[..., Watcher], tmp_path: Path
) -> None:
    w = watching_all(project, watch)
    incoming = tmp_path / "incoming"  # beside the project: moving it in is one event, for the directory
    (incoming / "deeper").mkdir(parents=True)
    (incoming / "deeper" / "Pivotfile").write_text("stage s:\n    outs: s.txt\n    run: echo s > $@\n")
    os.rename(incoming, project.root / "sub")
    assert w.next_build() == {"c": "skipped", "sub/deeper:s": "ran"}


# -- Pivotfiles --------------------------------------------------------------------------


def test_a_broken_pivotfile_keeps_the_last_good_graph_until_fixed(chain: Project, chain_watch: Watcher) -> None:
    broken = src(CHAIN) + "\nstage d\n    run: true\n"
    chain.pivotfile(broken)
    seen = chain_watch.until("watching")
    assert [e["event"] for e in seen] == ["watching"], seen  # reported, nothing built
    line = len(broken.splitlines()) - 1  # `stage d` lacks its colon
    chain_watch.wait_err("; building with the last good Pivotfiles until this is fixed")
    assert re.search(rf"^Pivotfile:{line}:\d+: error: ", chain_watch.err(), re.M), chain_watch.err()
    assert "Traceback" not in chain_watch.err()

    chain.write("in.txt", "changed\n")  # still built, by the graph that loaded
    assert chain_watch.next_build() == {"a": "ran", "b": "ran", "c": "skipped"}

    chain.pivotfile(CHAIN.replace("echo c >>", "echo c2 >>"))  # fixed, with c's command changed
    assert chain_watch.next_build() == {"a": "skipped", "b": "skipped", "c": "ran"}
    assert runs(chain)[-1] == "c2"


# -- changes during a build ---------------------------------------------------------------


def test_a_change_during_a_build_builds_again_once_it_ends(project: Project, watch: Callable[..., Watcher]) -> None:
    project.pivotfile(SLOW)
    project.write("in.txt", "one\n")
    w = watch("--json")
    start_held(project, w)
    project.write("in.txt", "three\n")
    # The watcher sees the change within the debounce, but says nothing of it
    # until the build ends: the test gives it this long before letting go.
    time.sleep(QUIET_S)
    (project.root / "hold").unlink()
    # The running stage finishes; `after` does not start: its input is stale.
    assert w.next_build() == {"slow": "ran", "after": "cancelled"}
    assert w.next_build() == {"slow": "ran", "after": "ran"}
    w.quiet()
    assert read(project, "after.txt") == "three\n"


def test_restart_kills_the_running_stage_whose_input_changed(project: Project, watch: Callable[..., Watcher]) -> None:
    project.pivotfile(SLOW)
    project.write("in.txt", "one\n")
    w = watch("--json", "--restart")
    start_held(project, w)
    project.write("in.txt", "three\n")
    seen = w.until("build_finished")
    done = {e["stage"]: e["status"] for e in seen if e["event"] == "stage_finished"}
    assert done == {"slow": "cancelled", "after": "cancelled"}
    (project.root / "hold").unlink()
    w.until("watching")
    assert w.next_build() == {"slow": "ran", "after": "ran"}
    assert read(project, "after.txt") == "three\n"
    assert runs(project) == ["slow", "after", "slow", "after"]


# -- ending it -------------------------------------------------------------------------------


def test_ctrl_c_during_a_stage_kills_it_and_records_what_finished(
    project: Project, watch: Callable[..., Watcher]
) -> None:
    project.pivotfile("""
        stage a:
            deps: in.txt
            outs: a.txt
            run: cp $< $@

        stage b:
            deps: a.txt
            outs: b.txt
            run: sleep 30 & echo $! > b.pid; wait

        stage c:
            deps: other.txt
            outs: c.txt
            run: cp $< $@
        """)
    project.write("in.txt", "in\n")
    project.write("other.txt", "other\n")
    w = watch("--json")
    finished: set[str] = set()
    while finished != {"a", "c"}:  # (c runs beside a and b: on a busy machine it can finish after b starts)
        event = json.loads(w.line())
        if event["event"] == "stage_finished":
            finished.add(event["stage"])
    pid = hung_pid(project)
    assert w.stop() == 130
    assert wait_gone(pid)
    assert locked(project) == {"a", "c"}
    assert "Traceback" not in w.err()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_watching_exits_130(chain_watch: Watcher, sig: int) -> None:
    assert chain_watch.stop(sig) == 130
    assert "Traceback" not in chain_watch.err()


# -- failures and plain output ----------------------------------------------------------


def test_a_failing_stage_does_not_end_watch_mode(project: Project, watch: Callable[..., Watcher]) -> None:
    project.pivotfile("""
        stage check:
            deps: in.txt
            outs: ok.txt
            run: grep good $< > $@
        """)
    project.write("in.txt", "bad\n")
    w = watch("--json")
    assert w.next_build() == {"check": "failed"}
    project.write("in.txt", "good\n")
    assert w.next_build() == {"check": "ran"}
    assert read(project, "ok.txt") == "good\n"


def test_a_failing_stage_whose_output_another_reads_is_not_rebuilt_over_and_over(
    project: Project, watch: Callable[..., Watcher]
) -> None:
    # Its output, written and then rolled back by the build, is a dep of `after`:
    # the watcher sees those writes after the build, and they are the build's own.
    project.pivotfile("""
        stage bad:
            deps: in.txt
            outs: bad.txt
            run: cat $< > $@; grep good $<
        stage after:
            deps: bad.txt
            outs: after.txt
            run: cp $< $@
        """)
    project.write("in.txt", "bad\n")
    w = watch("--json")
    assert w.next_build() == {"bad": "failed", "after": "blocked"}
    w.quiet()
    project.write("in.txt", "good\n")
    assert w.next_build() == {"bad": "ran", "after": "ran"}
    project.write("in.txt", "bad again\n")  # a failure that restores the recorded version of bad.txt
    assert w.next_build() == {"bad": "failed", "after": "blocked"}
    w.quiet()
    assert read(project, "bad.txt") == "good\n"


def test_creating_a_missing_included_pipeline_fixes_the_pivotfile(chain: Project, chain_watch: Watcher) -> None:
    chain.write("Pivotfile", read(chain, "Pivotfile") + "\ninclude sub/Pivotfile\n")
    chain_watch.wait_err("building with the last good Pivotfiles until this is fixed")
    chain_watch.until("watching")  # (said again, below the error)
    chain.write("sub/x.txt", "x\n")
    chain.write("sub/Pivotfile", "stage s:\n    deps: x.txt\n    outs: s.txt\n    run: cp $< $@\n")
    built = chain_watch.next_build()
    assert built["sub:s"] == "ran"
    assert read(chain, "sub/s.txt") == "x\n"


def test_plain_output_is_a_summary_a_build_and_the_watching_line(chain: Project, watch: Callable[..., Watcher]) -> None:
    w = watch()
    watching = "pivotbuild: watching 4 files for changes (Ctrl-C to stop)"
    w.wait_err(watching)
    time.sleep(QUIET_S)  # for the build after it to pass (see chain_watch)
    chain.write("in.txt", "changed\n")
    wait_until(lambda: len(SUMMARY.findall(w.err())) == 2, EVENT_TIMEOUT_S, f"a second summary; stderr:\n{w.err()}")
    lines = [w.line() for _ in range(5)]  # a `[k/N] stage` line as each stage starts
    assert [re.sub(r"^\[\d+/\d+\] ", "", line) for line in lines[3:]] == ["a", "b"], lines
    w.quiet()
    assert [tuple(int(n) for n in s[:4]) for s in SUMMARY.findall(w.err())] == [(3, 0, 0, 0), (2, 1, 0, 0)]
    assert w.err_lines.count(watching) == 1
    assert len(w.err_lines) == 3, w.err()


# -- more ways files change ------------------------------------------------------------------


def test_only_what_the_targets_read_is_watched(chain: Project, watch: Callable[..., Watcher]) -> None:
    w = watch("--json", "b")
    assert w.next_build() == {"a": "ran", "b": "ran"}
    chain.write("other.txt", "c's, not b's\n")
    w.quiet()
    chain.write("in.txt", "changed\n")
    assert w.next_build() == {"a": "ran", "b": "ran"}
    assert sorted(runs(chain)) == ["a", "a", "b", "b"]


def test_an_editors_atomic_save_rebuilds(chain: Project, chain_watch: Watcher) -> None:
    chain.write(".in.txt.swp", "saved\n")
    os.replace(chain.root / ".in.txt.swp", chain.root / "in.txt")
    assert chain_watch.next_build() == {"a": "ran", "b": "ran", "c": "skipped"}
    assert read(chain, "b.txt") == "SAVED\n"


def test_a_missing_dep_at_the_start_is_reported_and_creating_it_builds(
    chain: Project, watch: Callable[..., Watcher]
) -> None:
    (chain.root / "in.txt").unlink()
    w = watch("--json")
    seen = w.until("watching")
    assert [e["event"] for e in seen] == ["watching"], seen
    w.wait_err("; waiting for a change")
    assert "in.txt" in w.err()
    chain.write("in.txt", "now\n")
    assert w.next_build() == {"a": "ran", "b": "ran", "c": "ran"}


def test_a_changed_params_file_reruns_the_stage_reading_it(project: Project, watch: Callable[..., Watcher]) -> None:
    project.pivotfile("""
        stage train:
            params: train.epochs
            outs: model.txt
            run: echo ${params.train.epochs} > $@

        stage other:
            params: model.depth
            outs: other.txt
            run: echo ${params.model.depth} > $@
        """)
    project.write("params.toml", "[train]\nepochs = 3\n\n[model]\ndepth = 4\n")
    w = watch("--json")
    assert w.next_build() == {"train": "ran", "other": "ran"}
    project.write("params.toml", "[train]\nepochs = 5\n\n[model]\ndepth = 4\n")
    assert w.next_build() == {"train": "ran", "other": "skipped"}
    assert read(project, "model.txt") == "5\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [(("nosuch",), "unknown target 'nosuch'"), (("-f", "Broken"), "Broken:1:8: error: ")],
)
def test_what_cannot_be_built_at_the_start_exits_2(chain: Project, args: tuple[str, ...], says: str) -> None:
    chain.write("Broken", "stage x\n")
    r = chain.run("-w", *DEBOUNCE, *args, timeout=EVENT_TIMEOUT_S)
    assert r.code == 2, r
    assert says in r.err
    assert "Traceback" not in r.err


# -- the agent server (--serve) ---------------------------------------------------------------


def rpc(p: Project, method: str, params: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    args = [method] if params is None else [method, json.dumps(params)]
    return subprocess.run(
        [*PIVOTBUILD, "rpc", *args], cwd=p.root, capture_output=True, text=True, timeout=EVENT_TIMEOUT_S, check=False
    )


def answer(p: Project, method: str, params: dict[str, Any] | None = None) -> Any:
    r = rpc(p, method, params)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_agent_server_answers_each_method_about_the_real_builds(
    project: Project, watch: Callable[..., Watcher]
) -> None:
    project.pivotfile(SLOW)
    project.write("in.txt", "one\n")
    w = watch("--json", "--serve")
    assert w.next_build() == {"slow": "ran", "after": "ran"}
    w.quiet()  # (and the build not shown that follows, for slow.txt, which after reads, is over)
    sock = project.root / ".pivot" / "agent.sock"
    assert (sock.stat().st_mode & 0o777) == 0o600

    assert answer(project, "stages") == {
        "stages": [
            {"name": "slow", "state": "ran", "reason": "never run"},
            {"name": "after", "state": "ran", "reason": "never run"},
        ]
    }
    status = answer(project, "status")
    assert status["state"] == "idle" and status["build"]["ran"] == 2
    assert answer(project, "explain", {"stage": "after"}) == {"will_run": False, "reason": None}
    since = answer(project, "events_since", {"cursor": 0})
    assert [e["event"] for e in since["events"]][:1] == ["build_started"]
    assert answer(project, "events_since", {"cursor": since["cursor"]}) == {"events": [], "cursor": since["cursor"]}

    unknown = rpc(project, "run", {"stages": ["nope"]})
    assert unknown.returncode == 1
    assert "agent error -32602: unknown target 'nope'" in unknown.stderr

    # A build asked for, then cancelled while its stage runs: watch mode goes on.
    (project.root / "started").unlink()
    project.write("hold", "")
    assert answer(project, "run", {"stages": ["slow"], "force": True}) == {"accepted": True}
    wait_until((project.root / "started").exists, EVENT_TIMEOUT_S, "stage slow to start")
    assert answer(project, "status")["state"] == "building"
    assert answer(project, "explain", {"stage": "slow"}) == {"will_run": True, "reason": "forced"}
    both = [
        subprocess.Popen([*PIVOTBUILD, "rpc", "stages"], cwd=project.root, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # two clients at once
    for client in both:
        out, _ = client.communicate(timeout=EVENT_TIMEOUT_S)
        assert client.returncode == 0 and json.loads(out)["stages"][0]["state"] == "running"
    assert answer(project, "cancel") == {"cancelled": True}
    [finished] = [e for e in w.until("watching") if e["event"] == "build_finished"]
    assert finished["cancelled"] == 1
    assert answer(project, "cancel") == {"cancelled": False}
    assert answer(project, "stages")["stages"][0]["state"] == "cancelled"
    w.quiet()  # the cancelled stages' rolled-back outputs start no build

    (project.root / "hold").unlink()
    project.write("in.txt", "three\n")  # still watching
    assert w.next_build() == {"slow": "ran", "after": "ran"}
    assert w.stop() == 130
    assert not sock.exists()


def test_a_second_agent_server_is_refused_naming_the_first(project: Project, watch: Callable[..., Watcher]) -> None:
    project.pivotfile(SLOW)
    project.write("in.txt", "one\n")
    first = watch("--json", "--serve")
    first.until("watching")
    second = watch("--json", "--serve")
    assert second.proc.wait(timeout=EVENT_TIMEOUT_S) == 2
    second.wait_err(f"an agent server is already running for this project (pid {first.proc.pid}")
    assert answer(project, "status")["state"] == "idle"  # the first still serves
