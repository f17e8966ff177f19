"""runner.run: real processes, their output, exit status, timeouts and cancellation."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, read_pid, run_script, wait_gone

from pivotbuild.build.executors import runner
from pivotbuild.build.executors.poller import Poller
from pivotbuild.build.executors.runner import TAIL_LINES, RunResult, RunSpec, run, stage_argv
from pivotbuild.build.executors.spawn import Starter

SH = ("/bin/sh", "-e")


class Lines:
    """Collects (stream, line) pairs from run()'s callback."""

    def __init__(self) -> None:
        self.all: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, stream: str, line: str) -> None:
        with self._lock:
            self.all.append((stream, line))

    def of(self, stream: str) -> list[str]:
        return [line for s, line in self.all if s == stream]


def sh(
    script: str,
    cwd: Path,
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[RunResult, Lines, float]:
    lines = Lines()
    spec = RunSpec(stage_argv(SH, script), cwd, env if env is not None else dict(os.environ), timeout)
    started = time.monotonic()
    result = run(spec, lines, cancel or threading.Event())
    elapsed = time.monotonic() - started
    assert elapsed < HANG_GUARD_S, f"run() took {elapsed:.1f}s"
    return result, lines, elapsed


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids of background processes a test leaves running on purpose; killed afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- exit status -----------------------------------------------------------------------


def test_success(tmp_path: Path) -> None:
    result, lines, _ = sh("echo hello", tmp_path)
    assert result.returncode == 0
    assert result.signal is None
    assert result.ok
    assert not result.timed_out and not result.cancelled
    assert lines.all == [("stdout", "hello")]
    assert result.tail == ("hello",)
    assert result.describe(None) == "exit status 0"
    assert result.duration_s >= 0


@pytest.mark.parametrize("code", [1, 2, 3, 42, 255])
def test_exit_status(tmp_path: Path, code: int) -> None:
    result, _, _ = sh(f"exit {code}", tmp_path)
    assert result.returncode == code
    assert result.signal is None
    assert not result.ok
    assert result.describe(None) == f"exit status {code}"


def test_sh_e_stops_at_the_first_failure(tmp_path: Path) -> None:
    result, lines, _ = sh("echo one; false; echo two", tmp_path)
    assert result.returncode == 1
    assert lines.of("stdout") == ["one"]


def test_killed_by_signal(tmp_path: Path) -> None:
    result, _, _ = sh("echo before; kill -9 $$", tmp_path)
    assert result.returncode is None
    assert result.signal == 9
    assert not result.ok
    assert not result.timed_out
    assert result.describe(None) == "killed by SIGKILL"
    assert result.tail == ("before",)


def test_killed_by_sigterm(tmp_path: Path) -> None:
    result, _, _ = sh("kill -TERM $$", tmp_path)
    assert (result.returncode, result.signal) == (None, signal.SIGTERM)
    assert result.describe(None) == "killed by SIGTERM"


# -- output ----------------------------------------------------------------------------


def test_stdout_and_stderr_attributed_in_order(tmp_path: Path) -> None:
    script = "; ".join(f"echo out{i}; echo err{i} >&2" for i in range(50))
    result, lines, _ = sh(script, tmp_path)
    assert result.ok
    assert lines.of("stdout") == [f"out{i}" for i in range(50)]
    assert lines.of("stderr") == [f"err{i}" for i in range(50)]
    assert {s for s, _ in lines.all} == {"stdout", "stderr"}


def test_many_lines_in_order(tmp_path: Path) -> None:
    result, lines, _ = sh("i=0; while [ $i -lt 5000 ]; do echo line$i; i=$((i+1)); done", tmp_path)
    assert result.ok
    assert lines.of("stdout") == [f"line{i}" for i in range(5000)]
    assert result.tail == tuple(f"line{i}" for i in range(5000 - TAIL_LINES, 5000))


def test_final_line_without_newline(tmp_path: Path) -> None:
    result, lines, _ = sh("printf 'first\\nlast'; printf 'e1\\ne2' >&2", tmp_path)
    assert result.ok
    assert lines.of("stdout") == ["first", "last"]
    assert lines.of("stderr") == ["e1", "e2"]


def test_empty_lines_are_kept(tmp_path: Path) -> None:
    _, lines, _ = sh("printf 'a\\n\\nb\\n'", tmp_path)
    assert lines.of("stdout") == ["a", "", "b"]


def test_crlf_line_endings(tmp_path: Path) -> None:
    _, lines, _ = sh("printf 'a\\r\\nb\\r\\n'", tmp_path)
    assert lines.of("stdout") == ["a", "b"]


def test_no_output(tmp_path: Path) -> None:
    result, lines, _ = sh("true", tmp_path)
    assert result.ok
    assert lines.all == []
    assert result.tail == ()


def test_long_lines(tmp_path: Path) -> None:
    n = 3 * 65536 + 17  # longer than one read
    script = f"{sys.executable} -c \"import sys; sys.stdout.write('x' * {n} + '\\n' + 'y' * {n})\""
    result, lines, _ = sh(script, tmp_path)
    assert result.ok
    assert lines.of("stdout") == ["x" * n, "y" * n]


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    result, lines, _ = sh("printf 'ok \\377\\376 end\\n'; printf '\\303\\251t\\303\\251\\n'", tmp_path)
    assert result.ok
    assert lines.of("stdout") == ["ok \ufffd\ufffd end", "été"]


def test_binary_output_does_not_break_the_runner(tmp_path: Path) -> None:
    script = f'{sys.executable} -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 20)"'
    result, lines, _ = sh(script, tmp_path)
    assert result.ok
    joined = "\n".join(lines.of("stdout"))
    assert "\x00" in joined
    assert "\ufffd" in joined


def test_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    result, _, _ = sh("i=0; while [ $i -lt 100 ]; do echo $i >&2; i=$((i+1)); done; exit 3", tmp_path)
    assert result.returncode == 3
    assert result.tail == tuple(str(i) for i in range(100 - TAIL_LINES, 100))


# -- timeout and cancel ----------------------------------------------------------------


def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pidfile}; echo started; wait"
    result, lines, _ = sh(script, tmp_path, timeout=1)
    assert result.timed_out
    assert not result.ok
    assert not result.cancelled
    assert result.describe(1) == "timed out after 1s"
    assert lines.of("stdout") == ["started"]
    assert wait_gone(read_pid(pidfile), 5)


def test_timeout_kills_a_grandchild_that_left_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & sleep 60"
    result, _, _ = sh(script, tmp_path, timeout=1)
    assert result.timed_out
    assert wait_gone(read_pid(pidfile), 5)


def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # SIGTERM is ignored (and the ignoring is inherited by the children).
    script = f"trap '' TERM; sleep 60 & echo $! > {pidfile}; wait"
    result, _, _ = sh(script, tmp_path, timeout=0.5)
    assert result.timed_out
    assert result.signal == signal.SIGKILL
    assert wait_gone(read_pid(pidfile), 5)


def test_timeout_not_reached(tmp_path: Path) -> None:
    result, lines, _ = sh("echo quick", tmp_path, timeout=30)
    assert result.ok
    assert not result.timed_out
    assert lines.of("stdout") == ["quick"]


def test_timeout_of_a_stage_that_redirects_its_output(tmp_path: Path) -> None:
    # A script sending its output to a log closes the pipes run() watches;
    # the timeout must still apply.
    result, _, elapsed = sh("exec > log.txt 2>&1; echo hidden; sleep 20", tmp_path, timeout=1)
    assert elapsed < HANG_GUARD_S
    assert result.timed_out
    assert (tmp_path / "log.txt").read_text() == "hidden\n"


@pytest.mark.parametrize("script", ["ls -d . no-such-entry > out.txt", "no-such-program-anywhere > out.txt"])
def test_a_plain_command_sending_its_output_to_a_file_is_given_no_stdout_pipe(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing can reach its stdout (the command's goes to the file, and the
    # shell, where it runs it, writes none of its own): it gets /dev/null,
    # and only stderr is followed; what it says there, and its status, still come.
    monkeypatch.chdir(tmp_path)
    lines = Lines()
    ended: list[RunResult] = []
    poller = Poller()
    spec = RunSpec(stage_argv(SH, script), tmp_path, dict(os.environ))
    try:
        proc = runner.Process(spec, lines, ended.append, poller, starter=Starter())
        assert sorted(proc.pipes.values()) == ["stderr"]
        deadline = time.monotonic() + HANG_GUARD_S
        while not ended and time.monotonic() < deadline:
            proc.on_time(time.monotonic())
            poller.wait(0.05)
    finally:
        poller.close()
    assert ended and ended[0].returncode in (2, 127)
    assert (tmp_path / "out.txt").exists()
    assert lines.of("stdout") == []
    assert any("no-such" in line for line in lines.of("stderr"))


@pytest.mark.parametrize(
    ("script", "shown"),
    [
        ("ls -d .", ["."]),
        ("ls -d . > out.txt; echo after", ["after"]),  # (not one plain command: the shell's)
        ("echo hi > out.txt; echo after", ["after"]),
    ],
)
def test_a_command_writing_to_stdout_still_gets_its_pipe(
    script: str, shown: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    lines = Lines()
    spec = RunSpec(stage_argv(SH, script), tmp_path, dict(os.environ))
    result = run(spec, lines, threading.Event())
    assert result.returncode == 0 and lines.of("stdout") == shown


def test_cancel_kills_the_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    try:
        result, _, _ = sh(f"sleep 60 & echo $! > {pidfile}; wait", tmp_path, cancel=cancel)
    finally:
        timer.cancel()
    assert result.cancelled
    assert not result.timed_out
    assert not result.ok
    assert result.describe(None) == "cancelled"
    assert wait_gone(read_pid(pidfile), 5)


def test_cancel_before_start(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    result, _, _ = sh("sleep 60", tmp_path, cancel=cancel)
    assert result.cancelled
    assert not result.ok


def test_cancel_of_a_stage_that_redirects_its_output(tmp_path: Path) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    try:
        result, _, elapsed = sh("exec >/dev/null 2>&1; sleep 20", tmp_path, cancel=cancel)
    finally:
        timer.cancel()
    assert elapsed < HANG_GUARD_S
    assert result.cancelled


def test_background_child_holding_the_pipe_does_not_hang(tmp_path: Path, strays: list[int]) -> None:
    pidfile = tmp_path / "bg.pid"
    result, lines, elapsed = sh(f"sleep 30 & echo $! > {pidfile}; echo done", tmp_path)
    strays.append(read_pid(pidfile))
    assert elapsed < 10
    assert result.returncode == 0
    assert result.ok
    assert lines.of("stdout") == ["done"]


def test_background_child_holding_the_pipe_with_a_failing_stage(tmp_path: Path, strays: list[int]) -> None:
    pidfile = tmp_path / "bg.pid"
    result, _, elapsed = sh(f"sleep 30 & echo $! > {pidfile}; printf partial; exit 4", tmp_path)
    strays.append(read_pid(pidfile))
    assert elapsed < 10
    assert result.returncode == 4
    assert result.tail == ("partial",)


@pytest.fixture(params=["pidfd", "no pidfd"])
def exit_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """run() both where a stage's exit can be polled (Linux's pidfd) and where
    it cannot (other systems, old kernels)."""
    if request.param == "no pidfd":
        monkeypatch.setattr(runner, "_pidfd", lambda pid: None)


@pytest.mark.usefixtures("exit_watch")
def test_a_stage_running_on_after_closing_its_output(tmp_path: Path) -> None:
    result, lines, _ = sh("echo before; exec >/dev/null 2>&1; sleep 0.3; exit 3", tmp_path)
    assert result.returncode == 3
    assert lines.of("stdout") == ["before"]


@pytest.mark.usefixtures("exit_watch")
def test_timeout_of_a_stage_running_on_after_closing_its_output(tmp_path: Path) -> None:
    result, _, elapsed = sh("exec >/dev/null 2>&1; sleep 20", tmp_path, timeout=0.5)
    assert elapsed < HANG_GUARD_S
    assert result.timed_out


@pytest.mark.usefixtures("exit_watch")
def test_a_stage_whose_background_child_keeps_writing_ends_with_the_stage(tmp_path: Path, strays: list[int]) -> None:
    # The pipes never fall quiet, let alone close: the stage's end must still be
    # noticed, and what the child writes after the grace is not the stage's.
    pidfile = tmp_path / "bg.pid"
    script = f"(while :; do echo bg; sleep 0.01; done) & echo $! > {pidfile}; echo done; exit 5"
    result, lines, elapsed = sh(script, tmp_path)
    strays.append(read_pid(pidfile))
    assert elapsed < 10
    assert result.returncode == 5
    assert "done" in lines.of("stdout")


# -- starting --------------------------------------------------------------------------


def test_missing_executable(tmp_path: Path) -> None:
    lines = Lines()
    spec = RunSpec(("/no/such/program-xyz", "arg"), tmp_path, dict(os.environ))
    result = run(spec, lines, threading.Event())
    assert result.returncode == 127
    assert not result.ok
    assert len(lines.all) == 1
    stream, message = lines.all[0]
    assert stream == "stderr"
    assert "/no/such/program-xyz" in message
    assert result.tail == (message,)


def test_missing_command_inside_the_shell(tmp_path: Path) -> None:
    result, lines, _ = sh("no-such-command-xyz", tmp_path)
    assert result.returncode == 127
    assert any("no-such-command-xyz" in line for line in lines.of("stderr"))


def test_cwd_is_honoured(tmp_path: Path) -> None:
    sub = tmp_path / "sub dir"
    sub.mkdir()
    result, lines, _ = sh("pwd -P; echo x > made.txt", sub)
    assert result.ok
    assert lines.of("stdout") == [str(sub.resolve())]
    assert (sub / "made.txt").read_text() == "x\n"


def test_env_is_honoured_exactly(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PIVOT_TEST_VALUE": "with spaces & $stuff"}
    result, lines, _ = sh('echo "$PIVOT_TEST_VALUE"; echo "${HOME-unset}"', tmp_path, env=env)
    assert result.ok
    assert lines.of("stdout") == ["with spaces & $stuff", "unset"]


def test_stdin_is_empty(tmp_path: Path) -> None:
    result, lines, _ = sh("cat; echo end", tmp_path)
    assert result.ok
    assert lines.of("stdout") == ["end"]


def test_runs_in_its_own_process_group(tmp_path: Path) -> None:
    script = f"{sys.executable} -c 'import os; print(os.getpgrp(), os.getsid(0))'; echo $$"
    result, lines, _ = sh(script, tmp_path)
    assert result.ok
    pgrp, sid = map(int, lines.of("stdout")[0].split())
    shell_pid = int(lines.of("stdout")[1])
    assert pgrp == sid == shell_pid  # a new session led by the stage's shell
    assert pgrp != os.getpgrp()


def test_stage_argv() -> None:
    assert stage_argv(("/bin/sh", "-e"), "echo hi") == ("/bin/sh", "-e", "-c", "echo hi")
    assert stage_argv(("bash", "-eu", "-o", "pipefail"), "x") == ("bash", "-eu", "-o", "pipefail", "-c", "x")


# A stage cancelled or abandoned in the instant after its start, many times,
# in a process held to one core: a cloned child (spawn.py's _clonespawn) then
# has usually not made its own session yet, so its group does not exist; it
# must be signalled itself, or `abandon` waits for its whole run.
_STOPPED_AS_IT_STARTS = """
import os, sys, time
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from pivotbuild.build.executors import runner
from pivotbuild.build.executors.poller import Poller
from pivotbuild.build.executors.runner import RunSpec, stage_argv
from pivotbuild.build.executors.spawn import Starter

starter = Starter()
poller = Poller()
for i in range(40):
    ended = []
    spec = RunSpec(stage_argv(("/bin/sh", "-e"), "sleep 60"), os.getcwd(), dict(os.environ))
    proc = runner.Process(spec, lambda stream, line: None, ended.append, poller, starter=starter)
    if i % 2:
        proc.abandon()
    else:
        proc.kill()
        while not ended:
            proc.on_time(time.monotonic())
            poller.wait(0.05)
        assert ended[0].cancelled, ended
print("clones" if starter.clones else "spawns")
"""


def test_a_stage_stopped_as_it_starts_is_stopped(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_script(_STOPPED_AS_IT_STARTS, [], tmp_path, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < HANG_GUARD_S
    assert proc.stdout.strip() in ("clones", "spawns")
