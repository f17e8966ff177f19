"""spawn.Starter: a stage's process started by posix_spawn is the one Popen would start."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from pivotbuild.build.executors.spawn import Child, Starter

# What a stage could notice of how it was started: its signals ignored, its
# session and group (its own), its directory, its environment, its descriptors.
PROBE = (
    "grep '^SigIgn' /proc/self/status; "
    'test "$(ps -o sid= -p $$)" -eq $$ && echo own session; '
    'test "$(ps -o pgid= -p $$)" -eq $$ && echo own group; '
    'pwd; echo "$PROBE_VALUE"; ls /proc/$$/fd | sort -n | tr "\\n" " "'
)


_GLIBC_INTERNAL = (1 << 31) | (1 << 32)  # signals 32 and 33


def _ignored(probed: str) -> int:
    return int(probed.split("SigIgn:")[1].split(maxsplit=1)[0], 16)


def _without_sigign(probed: str) -> str:
    return "\n".join(line for line in probed.splitlines() if not line.startswith("SigIgn:"))


def _run(starter: Starter, cwd: Path, argv: tuple[str, ...] = ("/bin/sh", "-c", PROBE)) -> tuple[object, str]:
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        child = starter.start(
            argv, cwd, {**os.environ, "PROBE_VALUE": "a value"}, stdin=null, stdout=out_w, stderr=out_w
        )
    finally:
        os.close(out_w)
        os.close(null)
    with os.fdopen(out_r) as f:
        text = f.read()
    child.wait()
    return child, text


@pytest.fixture
def inherited() -> object:
    """An inheritable descriptor this process holds (as one a make jobserver
    hands down), before the starter is made."""
    r, w = os.pipe()
    os.set_inheritable(r, True)
    yield r
    os.close(r)
    os.close(w)


def test_a_spawned_stage_is_started_as_popen_starts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inherited: int
) -> None:
    monkeypatch.chdir(tmp_path)
    spawner = Starter()
    assert spawner.spawns, "posix_spawn is used on this machine (glibc)"
    spawned, seen = _run(spawner, tmp_path)
    popened, expected = _run(Starter(spawn=False), tmp_path)
    assert isinstance(spawned, Child)
    assert isinstance(popened, subprocess.Popen)
    assert _without_sigign(seen) == _without_sigign(expected)
    assert "own session\nown group\n" in seen
    assert f"{tmp_path}\na value\n" in seen
    assert f" {inherited} " not in f" {seen.splitlines()[-1]} "  # closed, as Popen's close_fds closes it
    # The same signals ignored, but for glibc's two internal ones (32 and 33: its
    # posix_spawn leaves them ignored; glibc programs take them back at start);
    # SIGPIPE and SIGXFSZ, which Python ignores, back to their defaults.
    assert _ignored(seen) & ~_GLIBC_INTERNAL == _ignored(expected)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not _ignored(seen) & (1 << (sig - 1))


def test_elsewhere_than_our_directory_popen_starts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    child, seen = _run(Starter(), tmp_path / "sub")
    assert isinstance(child, subprocess.Popen)
    assert f"{tmp_path / 'sub'}\n" in seen


def test_a_program_that_cannot_start_raises_as_with_popen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    for argv in (("/no/such/program",), (str(tmp_path / "not-executable"),)):
        with pytest.raises(OSError) as spawned:
            _run(Starter(), tmp_path, argv)
        with pytest.raises(OSError) as popened:
            _run(Starter(spawn=False), tmp_path, argv)
        assert spawned.value.strerror == popened.value.strerror


def test_a_child_reports_its_exit_as_popen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exited, _ = _run(Starter(), tmp_path, ("/bin/sh", "-c", "exit 3"))
    assert isinstance(exited, Child)
    assert exited.returncode == 3
    assert exited.poll() == 3  # (reaped once)
    killed, _ = _run(Starter(), tmp_path, ("/bin/sh", "-c", "kill -KILL $$"))
    assert killed.returncode == -signal.SIGKILL


def test_poll_says_none_until_the_child_exits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        child = Starter().start(
            ("/bin/sh", "-c", "cat >/dev/null"), tmp_path, dict(os.environ), stdin=r, stdout=null, stderr=null
        )
    finally:
        os.close(null)
    try:
        assert isinstance(child, Child)
        assert child.poll() is None
    finally:
        os.close(w)
        os.close(r)
    assert child.wait() == 0


def test_a_stage_starts_where_our_own_directory_was_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    child, seen = _run(Starter(), tmp_path)  # (Popen's chdir takes it there)
    assert isinstance(child, subprocess.Popen)
    assert child.returncode == 0
    assert f"{tmp_path}\na value\n" in seen
