"""spawn.Starter: a stage's process started by a clone that does not wait for
its exec (_clonespawn), or by posix_spawn, is the one Popen would start."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project
from helpers import run_script, statuses

from pivotbuild.build.executors import spawn
from pivotbuild.build.executors.plaincommand import PlainCommands
from pivotbuild.build.executors.spawn import Child, Starter, begin, devnull

Spawner = Callable[..., Starter]


@pytest.fixture(params=["clone", "posix_spawn"])
def spawner(request: pytest.FixtureRequest) -> Spawner:
    """Makes the Starter each way a stage can be spawned: cloned without
    waiting for its exec (_clonespawn, where built), or by posix_spawn."""
    if request.param == "clone" and spawn._clonespawn is None:
        pytest.skip("_clonespawn was not built at install (no C compiler here: test_the_clone_is_built_here)")
    clone = request.param == "clone"

    def make(*, spawn: bool = True) -> Starter:
        made = Starter(spawn=spawn, clone=clone)
        assert made.clones is (clone and spawn)
        return made

    return make


# What a stage could notice of how it was started: its signals ignored, its
# session and group (its own), its directory, its environment, its descriptors.
PROBE = (
    "grep '^SigIgn' /proc/self/status; "
    'test "$(ps -o sid= -p $$)" -eq $$ && echo own session; '
    'test "$(ps -o pgid= -p $$)" -eq $$ && echo own group; '
    # (The shell's own descriptors, by its own glob: `ls` in a pipeline raced
    # the shell setting up the pipeline's pipes.)
    'pwd; echo "$PROBE_VALUE"; cd /proc/$$/fd && echo *'
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
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inherited: int
) -> None:
    monkeypatch.chdir(tmp_path)
    spawner = spawner()
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


def test_a_signal_ignored_by_the_build_stays_ignored_in_its_stages_and_a_handled_one_does_not(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spawn names every signal to reset in the child (one system call
    each, not two): SIGHUP ignored by the build (`nohup`) stays ignored, as
    through Popen; SIGUSR1, which the build handles, is at its default."""
    monkeypatch.chdir(tmp_path)
    was = signal.signal(signal.SIGHUP, signal.SIG_IGN), signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        spawned, seen = _run(spawner(), tmp_path)
        _, expected = _run(Starter(spawn=False), tmp_path)
    finally:
        signal.signal(signal.SIGHUP, was[0])
        signal.signal(signal.SIGUSR1, was[1])
    assert isinstance(spawned, Child)
    assert _ignored(seen) & ~_GLIBC_INTERNAL == _ignored(expected)
    assert _ignored(seen) & (1 << (signal.SIGHUP - 1))
    assert not _ignored(seen) & (1 << (signal.SIGUSR1 - 1))


def test_elsewhere_than_our_directory_popen_starts_it(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    child, seen = _run(spawner(), tmp_path / "sub")
    assert isinstance(child, subprocess.Popen)
    assert f"{tmp_path / 'sub'}\n" in seen


def test_a_program_that_cannot_start_fails_as_with_popen(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Popen and posix_spawn raise the exec's error; a cloned child, which
    the build does not wait for, exits 127 and tells it once reaped."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    for argv in (("/no/such/program",), (str(tmp_path / "not-executable"),)):
        with pytest.raises(OSError) as popened:
            _run(Starter(spawn=False), tmp_path, argv)
        starter = spawner()
        if starter.clones:
            child, printed = _run(starter, tmp_path, argv)
            assert isinstance(child, Child)
            assert (child.returncode, printed) == (127, "")
            failed = child.start_error()
            assert failed is not None and failed.strerror == popened.value.strerror
        else:
            with pytest.raises(OSError) as spawned:
                _run(starter, tmp_path, argv)
            assert spawned.value.strerror == popened.value.strerror


def test_a_child_that_started_tells_no_start_error(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    child, _ = _run(spawner(), tmp_path, ("/bin/sh", "-c", "exit 127"))
    assert isinstance(child, Child)
    assert child.returncode == 127 and child.start_error() is None


def test_a_child_reports_its_exit_as_popen(spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exited, _ = _run(spawner(), tmp_path, ("/bin/sh", "-c", "exit 3"))
    assert isinstance(exited, Child)
    assert exited.returncode == 3
    assert exited.poll() == 3  # (reaped once)
    killed, _ = _run(spawner(), tmp_path, ("/bin/sh", "-c", "kill -KILL $$"))
    assert killed.returncode == -signal.SIGKILL


def test_poll_says_none_until_the_child_exits(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        child = spawner().start(
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


def test_a_stage_starts_where_our_own_directory_was_removed(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    child, seen = _run(spawner(), tmp_path)  # (Popen's chdir takes it there)
    assert isinstance(child, subprocess.Popen)
    assert child.returncode == 0
    assert f"{tmp_path}\na value\n" in seen


# -- a simple script started without the shell -----------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PWD": os.getcwd()}


@pytest.mark.parametrize(
    ("script", "args", "redirect"),
    [
        ("md5sum a.txt b.txt > out.txt", ["md5sum", "a.txt", "b.txt"], ("out.txt", os.O_TRUNC)),
        ("cat\ta.txt   b.txt", ["cat", "a.txt", "b.txt"], None),
        ("sort --key=2,3 -o x a.txt >> log.txt", ["sort", "--key=2,3", "-o", "x", "a.txt"], ("log.txt", os.O_APPEND)),
        ("/usr/bin/env a@b%c:d+e", ["/usr/bin/env", "a@b%c:d+e"], None),
    ],
)
def test_a_plain_command_is_started_without_the_shell(
    script: str, args: list[str], redirect: tuple[str, int] | None
) -> None:
    found = PlainCommands().direct(("/bin/sh", "-e", "-c", script), _env())
    assert found is not None
    program, got, to, _ = found
    assert got == args and os.path.basename(program) == os.path.basename(args[0])
    if redirect is None:
        assert to is None
    else:
        assert to is not None and to[0] == redirect[0] and to[1] & redirect[1] and to[2] == 0o666


@pytest.mark.parametrize(
    "script",
    [
        "echo hi > out.txt",  # a builtin: the shell's echo, not /bin/echo
        "cd sub",
        "X=1 cat a.txt",  # an assignment
        "cat $X",
        "cat 'a b'",
        'cat "a"',
        "cat a\\ b",
        "cat *.txt",
        "cat a?.txt",
        "cat ~/a",
        "cat a.txt 2> err",  # 2> is stderr's: the shell's
        "cat a.txt 2>err",
        "cat a.txt >out",  # a redirect not standing alone: left to the shell
        "cat a > b > c",
        "cat a.txt | sort",
        "cat a.txt; true",
        "cat a.txt && true",
        "(cat a.txt)",
        "cat a.txt # comment",
        "cat a.txt\ncat b.txt",
        "cat a.txt < in",
        "chdir /",  # dash's too
        "cat in.txt > /dev/stderr",  # (could name one of pivotbuild's own descriptors)
        "cat in.txt > /dev/fd/3",
        "cat in.txt > /proc/self/fd/2",
        "cat in.txt > link-to-stderr",
        "",
        "> out",
    ],
)
def test_anything_else_is_left_to_the_shell(script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link-to-stderr").symlink_to("/dev/stderr")
    assert PlainCommands().direct(("/bin/sh", "-e", "-c", script), _env()) is None


@pytest.mark.parametrize(
    ("script", "unused"),
    [
        ("md5sum a b > out", True),
        ("cat a >> log", True),
        ("no-such-program-anywhere > out", True),  # the shell says so on stderr
        ("echo hi > out", False),  # a builtin: the shell's own
        (". ./lib.sh > log", False),  # (what it sources may set a trap that prints later)
        ("trap date EXIT > out", False),
        ("X=1 > out", False),
        ("cat a", False),
        ("cat a 2> err", False),
        ("cat a >out", False),
        ("cat a > b > c", False),
        ("cat a > out; cat b", False),
        ("cat a > out\ncat b", False),
        ("cat 'a' > out", False),
        ("cat a > /dev/stdout", False),  # our stdout, for the shell to open
        ("cat a > link-to-stdout", False),
        ("cat a > /proc/self/fd/1", False),
    ],
)
def test_stdout_is_unused_only_by_one_plain_command_sending_it_to_a_file(
    spawner: Spawner, script: str, unused: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link-to-stdout").symlink_to("/dev/stdout")
    starter = spawner()
    assert _stdout_piped(starter, ("/bin/sh", "-e", "-c", script), tmp_path) is not unused
    assert _stdout_piped(starter, ("/bin/bash", "-e", "-c", script), tmp_path) is True
    assert _stdout_piped(starter, ("/bin/sh", "-e", "-c", script), tmp_path / "elsewhere") is True


def _stdout_piped(starter: Starter, argv: tuple[str, ...], cwd: Path) -> bool:
    """Whether `starter` gives `argv`, started in `cwd`, a pipe for its stdout
    (else /dev/null); the process it starts is waited for."""
    cwd.mkdir(exist_ok=True)
    err_r, err_w = os.pipe()
    try:
        proc, out_r = begin(starter, argv, cwd, _env(), stdin=devnull(), stderr=err_w)
    finally:
        os.close(err_w)
    proc.wait()
    os.close(err_r)
    if out_r >= 0:
        os.close(out_r)
    return out_r >= 0


def test_a_sourced_script_that_prints_at_exit_is_still_heard(project: Project) -> None:
    # `. ./lib.sh > log` only sends the sourcing's output to the log: a trap
    # it sets prints on the stage's own stdout when the shell exits.
    project.write("lib.sh", "trap 'echo summary: 3 warnings' EXIT\n")
    project.pivotfile("stage s:\n    deps: lib.sh\n    outs: setup.log\n    run: . ./lib.sh > setup.log\n")
    r = project.run("-v")
    assert r.code == 0, r.err
    assert "summary: 3 warnings" in r.out + r.err


def test_the_redirect_checked_for_stdout_is_checked_again_for_another_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `plain` found for one script is not kept for another: another
    # script naming the same file is checked afresh.
    monkeypatch.chdir(tmp_path)
    plain = PlainCommands()
    script = "cat in.txt > out.txt"
    assert plain.plain(("/bin/sh", "-e", "-c", script)) is not None
    (tmp_path / "out.txt").symlink_to("/dev/stdout")  # (as a stage might make it, in between)
    other = "".join(list(script))  # equal, not the same object
    assert plain.direct(("/bin/sh", "-e", "-c", other), _env()) is None


def test_a_stage_sending_its_output_to_our_stdout_still_shows_it(project: Project) -> None:
    project.pivotfile("stage s:\n    always: yes\n    run: ls -d . > /dev/stdout\n")
    r = project.run("-v")
    assert r.code == 0, r.err
    assert "." in (r.out + r.err).split()


def test_only_the_default_shell_is_skipped() -> None:
    plain = PlainCommands()
    assert plain.direct(("/bin/bash", "-e", "-c", "cat a"), _env()) is None
    assert plain.direct(("/bin/sh", "-c", "cat a"), _env()) is None  # SHELL set otherwise
    assert plain.direct(("/bin/sh", "-e", "-c", "cat a"), {k: v for k, v in _env().items() if k != "PATH"}) is None


def test_a_stage_with_a_plain_command_runs_without_a_shell_and_as_with_one(project: Project) -> None:
    project.write("parent.sh", '#!/bin/sh\nps -o comm= -p "$PPID"\n')
    os.chmod(project.root / "parent.sh", 0o755)
    project.write("in.txt", "one\n")
    project.pivotfile(
        """
stage direct:
    deps: in.txt parent.sh
    outs: parent.txt copy.txt
    run:
        ./parent.sh > parent.txt
        cat in.txt in.txt >> copy.txt
stage plain:
    deps: in.txt parent.sh
    outs: plain.txt
    run: ./parent.sh > plain.txt
stage appended:
    deps: in.txt
    outs: twice.txt
    run: cat in.txt >> twice.txt
"""
    )
    r = project.run()
    assert r.code == 0, r.err
    assert (project.root / "parent.txt").read_text().strip() == "sh"  # two lines: the shell's
    assert (project.root / "plain.txt").read_text().strip() != "sh"  # one plain line: started directly
    assert (project.root / "twice.txt").read_text() == "one\n"
    assert (project.root / "copy.txt").read_text() == "one\none\n"


@pytest.mark.parametrize("checkout", ["copy", "hardlink"])
def test_a_rebuilt_small_output_its_command_empties_is_rewritten_in_place(project: Project, checkout: str) -> None:
    """Rebuilt, a `> FILE` stage's small output keeps its inode (the redirect
    empties it, as under make and ninja: no inode freed and allocated, which
    ext4 makes slow after removals) and holds only the new result; a `>>`
    stage's output starts afresh all the same; a large one is replaced; in
    hardlink mode the output is the cache's object, so it is replaced, and
    the object of the first result is intact."""
    from pivotbuild.build.executors.stagework import EMPTIED_MAX

    project.write(".pivot/config.toml", f'[core]\ncheckout = "{checkout}"\n')
    project.write("in.txt", "one\n")
    project.pivotfile(
        f"""
stage plain:
    deps: in.txt
    outs: out.txt
    run: cat in.txt > out.txt
stage appended:
    deps: in.txt
    outs: log.txt
    run: cat in.txt in.txt >> log.txt
stage large:
    deps: in.txt
    outs: large.txt
    run: head -c {EMPTIED_MAX + 1} /dev/zero > large.txt
"""
    )
    assert project.run().code == 0
    out, large = project.root / "out.txt", project.root / "large.txt"
    # (Each output's content its own: in hardlink mode a file whose object the
    # cache already has stays a file of its own, which may be emptied.)
    # (Held open, the old files keep their inodes: one removed is not reused.)
    with open(out, "rb") as old_out, open(large, "rb") as old_large:
        project.write("in.txt", "two, longer\n")
        r = project.run()
        assert r.code == 0, r.err
        assert out.read_text() == "two, longer\n"
        assert (project.root / "log.txt").read_text() == "two, longer\n" * 2
        same = os.fstat(old_out.fileno()).st_ino == out.stat().st_ino
        assert same is (checkout == "copy")  # (emptied in place)
        if checkout == "hardlink":
            assert old_out.read() == b"one\n"  # (the first result's object, intact)
        assert os.fstat(old_large.fileno()).st_ino != large.stat().st_ino  # (removed first, as before)
        assert large.stat().st_size == EMPTIED_MAX + 1
    project.write("in.txt", "one\n")
    r = project.run("--json")
    assert r.code == 0, r.err
    assert statuses(r) == {"plain": "restored", "appended": "restored", "large": "restored"}  # (from the cache)
    assert out.read_text() == "one\n"


def test_in_hardlink_mode_an_output_whose_object_the_cache_had_is_its_own_file_and_may_be_emptied(
    project: Project,
) -> None:
    """In hardlink mode an output becomes the cache's object only if the cache
    did not have it yet; a second output of the same content stays a file of
    its own (one link, writable), which its `> FILE` command then empties in
    place: the object the first output is stays whole, and restores both."""
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    project.write("in.txt", "one\n")
    first = "stage a:\n    deps: in.txt\n    outs: a.txt\n    run: cat in.txt > a.txt\n"
    project.pivotfile(first)
    assert project.run().code == 0
    a, b = project.root / "a.txt", project.root / "b.txt"
    assert a.stat().st_nlink == 2  # (the object itself)
    project.pivotfile(first + "stage b:\n    deps: in.txt\n    outs: b.txt\n    run: cat in.txt > b.txt\n")
    assert project.run().code == 0
    assert b.stat().st_nlink == 1 and b.read_text() == "one\n"  # (the cache had its object)
    with open(b, "rb") as old_b:
        project.write("in.txt", "two\n")
        assert project.run().code == 0
        assert os.fstat(old_b.fileno()).st_ino == b.stat().st_ino  # (emptied in place)
    assert a.read_text() == b.read_text() == "two\n"
    project.write("in.txt", "one\n")
    r = project.run("--json")
    assert r.code == 0, r.err
    assert statuses(r) == {"a": "restored", "b": "restored"}
    assert a.read_text() == b.read_text() == "one\n"


def test_a_failed_stage_whose_output_was_emptied_gets_its_recorded_version_back(project: Project) -> None:
    """The redirect empties the old output before the command runs, as the
    removal did before it: a stage that then fails has the output it had
    rolled back from the cache, whole."""
    project.write("in.txt", "one\n")
    project.pivotfile("stage s:\n    deps: in.txt\n    outs: out.txt\n    run: grep one in.txt > out.txt\n")
    assert project.run().code == 0
    project.write("in.txt", "two\n")
    r = project.run()
    assert r.code != 0
    assert (project.root / "out.txt").read_text() == "one\n"


def test_a_plain_command_that_cannot_start_fails_as_the_shell_says(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: out.txt\n    run: no-such-program-anywhere x > out.txt\n")
    r = project.run()
    assert r.code == 1
    assert "not found" in r.err  # the shell's own words
    project.pivotfile("stage s:\n    outs: out.txt\n    run: cat /dev/null > nowhere/out.txt\n")
    r = project.run()
    assert r.code == 1
    assert "nowhere/out.txt" in r.err and "nonexistent" in r.err.lower()


def test_a_file_a_plain_command_cannot_open_is_left_to_the_shell_to_say_why(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file a plain command's `> FILE` names cannot be opened (its
    directory missing), the shell is started instead: what it says and how
    it ends are the shell's own, and no start error is reported."""
    monkeypatch.chdir(tmp_path)
    argv = ("/bin/sh", "-e", "-c", "cat /dev/null > nowhere/out.txt")
    assert PlainCommands().direct(argv, _env()) is not None  # (tried without the shell first)
    seen = []
    for starter in (spawner(), Starter(spawn=False)):
        err_r, err_w = os.pipe()
        try:
            child = starter.start(argv, None, _env(), stdin=devnull(), stdout=devnull(), stderr=err_w)
        finally:
            os.close(err_w)
        with os.fdopen(err_r) as f:
            said = f.read()
        seen.append((child.wait(), said))
        if isinstance(child, Child):
            assert child.start_error() is None
    assert seen[0] == seen[1]
    assert seen[0][0] == 2 and "nowhere/out.txt" in seen[0][1]


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("sign", [">", ">>"])
def test_the_file_a_plain_command_sends_its_output_to_reaches_its_program_alone(
    spawner: Spawner, sign: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build opens the file for the program it starts in the shell's
    stead (spawn._opened): the program gets it as its stdout and no other
    descriptor of ours, as through the shell, and the build keeps none."""
    monkeypatch.chdir(tmp_path)
    argv = ("/bin/sh", "-e", "-c", f"ls /proc/self/fd {sign} out.txt")
    null = devnull()  # (opened once, at its first use)
    before = _fds()
    spawned = spawner().start(argv, None, _env(), stdin=null, stdout=null, stderr=null)
    assert isinstance(spawned, Child) and spawned.as_shell  # started without the shell
    assert spawned.wait() == 0
    assert _fds() == before
    direct = (tmp_path / "out.txt").read_text()
    (tmp_path / "out.txt").write_text("kept\n")
    shelled = Starter(spawn=False).start(argv, None, _env(), stdin=null, stdout=null, stderr=null)
    assert shelled.wait() == 0
    through_shell = (tmp_path / "out.txt").read_text()
    # ls's own descriptors: 0 to 2, and the directory it lists
    assert direct.split() == ["0", "1", "2", "3"]
    assert through_shell == ("kept\n" if sign == ">>" else "") + direct


def test_a_plain_commands_file_is_empty_when_its_program_starts_and_holds_only_what_it_wrote(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file a plain command's `>` names is emptied before its program
    runs, as the shell empties it, though the descriptor the program
    writes through is opened apart (spawn._emptied_apart): a program that
    reads the file finds it empty, one that writes less than it held
    leaves nothing of the old bytes, and the file keeps its inode and
    mode; a missing one is created."""
    monkeypatch.chdir(tmp_path)
    null = devnull()
    out = tmp_path / "out.txt"
    out.write_text("old bytes, more of them than the program writes\n" * 20)
    out.chmod(0o640)
    inode = out.stat().st_ino
    (tmp_path / "short.txt").write_text("short\n")
    for script, expected in (("wc -c out.txt > out.txt", "0 out.txt\n"), ("cat short.txt > out.txt", "short\n")):
        child = spawner().start(("/bin/sh", "-e", "-c", script), None, _env(), stdin=null, stdout=null, stderr=null)
        assert isinstance(child, Child) and child.as_shell  # (started without the shell)
        assert child.wait() == 0
        assert out.read_text() == expected
        assert out.stat().st_ino == inode and stat.S_IMODE(out.stat().st_mode) == 0o640
    out.unlink()
    child = spawner().start(
        ("/bin/sh", "-e", "-c", "cat short.txt > out.txt"), None, _env(), stdin=null, stdout=null, stderr=null
    )
    assert child.wait() == 0
    assert out.read_text() == "short\n"


def test_a_build_started_without_a_stdin_sends_a_plain_commands_output_to_its_file(
    spawner: Spawner, tmp_path: Path
) -> None:
    """Started with descriptor 0 closed, the file a plain command's `>`
    names may be opened there: the child, whose 0 is its stdin, then opens
    it itself (spawn._opened)."""
    (tmp_path / "in.txt").write_text("one\n")
    code = """
import os
from pivotbuild.build.executors.spawn import Child, Starter
null = os.open(os.devnull, os.O_RDWR)  # (0: the one closed)
other = os.dup(null)
os.close(null)
starter = Starter(clone=CLONE)
assert starter.clones is CLONE
child = starter.start(("/bin/sh", "-e", "-c", "cat in.txt > out.txt"), None, {**os.environ, "PWD": os.getcwd()},
                        stdin=other, stdout=other, stderr=other)
assert isinstance(child, Child) and child.as_shell
assert child.wait() == 0
try:
    os.fstat(0)
except OSError:
    print("0 closed")
"""
    code = code.replace("CLONE", str(spawner().clones))
    proc = subprocess.run(
        ["/bin/sh", "-c", 'exec 0<&- && exec "$0" -c "$1"', sys.executable, code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "0 closed\n"
    assert (tmp_path / "out.txt").read_text() == "one\n"


def test_a_build_without_a_stdin_builds_its_plain_commands_outputs(project: Project) -> None:
    project.write("in.txt", "one\n")
    project.pivotfile(
        "stage a:\n    deps: in.txt\n    outs: out.txt\n    run: cat in.txt > out.txt\n\n"
        "stage b:\n    deps: out.txt\n    outs: log.txt\n    run: cat out.txt out.txt >> log.txt\n"
    )
    proc = subprocess.run(
        ["/bin/sh", "-c", 'exec 0<&- && exec "$@"', "sh", *PIVOTBUILD],
        cwd=project.root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (project.root / "out.txt").read_text() == "one\n"
    assert (project.root / "log.txt").read_text() == "one\none\n"


@pytest.mark.parametrize("pwd", [None, "/", "same", "link", ".", "./"])
def test_a_program_started_without_the_shell_gets_the_pwd_the_shell_would_give(pwd: str | None, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    here = os.getcwd()
    os.chdir(tmp_path / "real")
    try:
        env = {k: v for k, v in os.environ.items() if k != "PWD"}
        if pwd is not None:
            env["PWD"] = {"same": str(tmp_path / "real"), "link": str(tmp_path / "link")}.get(pwd, pwd)
        shell = subprocess.run(["/bin/sh", "-e", "-c", "env"], env=env, capture_output=True, text=True, check=True)
        want = [line for line in shell.stdout.splitlines() if line.startswith("PWD=")]
        got = PlainCommands()._with_pwd(env)
        assert [f"PWD={got['PWD']}"] == want
    finally:
        os.chdir(here)


@pytest.mark.parametrize("name", ["A-B", "1X", "A.B", "IFS", "OPTIND", "PPID"])
def test_an_environment_the_shell_would_change_is_left_to_the_shell(name: str) -> None:
    assert PlainCommands().direct(("/bin/sh", "-e", "-c", "cat a"), {**_env(), name: "x"}) is None


def test_a_program_started_without_the_shell_ends_as_the_shell_would(spawner: Spawner, tmp_path: Path) -> None:
    """Killed by a signal: the shell's status for it (128 + N); its signals unblocked."""
    script = tmp_path / "killme"
    script.write_text("#!/bin/sh\ngrep ^SigBlk /proc/self/status\nkill -TERM $$\n")
    script.chmod(0o755)
    here = os.getcwd()
    os.chdir(tmp_path)
    out_r, out_w = os.pipe()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        starter = spawner()
        assert PlainCommands().direct(("/bin/sh", "-e", "-c", "./killme"), _env()) is not None
        child = starter.start(
            ("/bin/sh", "-e", "-c", "./killme"), None, _env(), stdin=out_r, stdout=out_w, stderr=out_w
        )
        os.close(out_w)
        assert child.wait() == 128 + signal.SIGTERM
        with os.fdopen(out_r) as out:
            assert int(out.read().split()[1], 16) == 0  # no signal blocked
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.chdir(here)


def test_a_directory_or_a_file_that_cannot_run_on_path_is_passed_over(tmp_path: Path) -> None:
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    (first / "tool").mkdir(parents=True)  # a directory may be "executable": not a program
    second.mkdir()
    (second / "tool").write_text("#!/bin/sh\n")  # not executable
    third.mkdir()
    (third / "tool").write_text("#!/bin/sh\n")
    (third / "tool").chmod(0o755)
    found = PlainCommands().direct(("/bin/sh", "-e", "-c", "tool"), {**_env(), "PATH": f"{first}:{second}:{third}"})
    assert found is not None and found[0] == f"{third}/tool"


def test_on_our_own_path_the_program_is_looked_up_by_the_child(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the stage's PATH is ours (all absolute), the child's posix_spawnp
    searches it: past a directory and a file that cannot run, to a program
    installed since the last stage; not found, the shell says so."""
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    (first / "tool").mkdir(parents=True)
    second.mkdir()
    (second / "tool").write_text("#!/bin/sh\necho second\n")  # not executable, yet
    third.mkdir()
    (third / "tool").write_text("#!/bin/sh\necho third\n")
    (third / "tool").chmod(0o755)
    monkeypatch.setenv("PATH", f"{first}:{second}:{third}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    plain = PlainCommands()
    found = plain.direct(("/bin/sh", "-e", "-c", "tool > out.txt"), _env())
    assert found is not None and found[0] == "tool"  # (a bare name: searched in the child)
    elsewhere = plain.direct(("/bin/sh", "-e", "-c", "tool"), {**_env(), "PATH": f"{first}:{third}:/usr/bin:/bin"})
    assert elsewhere is not None and elsewhere[0] == f"{third}/tool"  # (not our PATH: looked up here)

    def run(script: str) -> tuple[int, str]:
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            child = spawner().start(
                ("/bin/sh", "-e", "-c", script), tmp_path, _env(), stdin=null, stdout=null, stderr=err_w
            )
        finally:
            os.close(err_w)
            os.close(null)
        with os.fdopen(err_r) as f:
            err = f.read()
        return child.wait(), err

    assert run("tool > out.txt") == (0, "")
    assert (tmp_path / "out.txt").read_text() == "third\n"
    (second / "tool").chmod(0o755)  # as a stage might install it
    assert run("tool > out.txt") == (0, "")
    assert (tmp_path / "out.txt").read_text() == "second\n"
    code, err = run("no-such-program-anywhere x > out.txt")
    assert code == 127 and "not found" in err  # the shell's own words


def test_a_program_installed_during_the_build_is_found(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for where in (first, second):
        (where / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    plain = PlainCommands()
    env = {**_env(), "PATH": f"{first}:{second}"}
    found = plain.direct(("/bin/sh", "-e", "-c", "tool"), env)
    assert found is not None and found[0] == f"{second}/tool"
    (first / "tool").chmod(0o755)  # as a stage might install it
    found = plain.direct(("/bin/sh", "-e", "-c", "tool"), env)
    assert found is not None and found[0] == f"{first}/tool"


def test_the_clone_is_built_here_where_a_c_compiler_is() -> None:
    """`_clonespawn` is built at install where the machine has a C compiler
    (hatch_build.py), unless PIVOTBUILD_NO_EXTENSION=1 (set for the tests
    too, they expect it not built); a build without it spawns by posix_spawn."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]  # (hatch_build's)
    if shutil.which(compiler) is None or os.environ.get("PIVOTBUILD_NO_EXTENSION") == "1":
        assert not Starter().clones
    else:
        assert spawn._clonespawn is not None, f"{compiler} is here, but _clonespawn was not built at install"
        assert Starter().clones


def test_a_script_without_a_shebang_started_in_the_shells_stead_is_run_by_the_shell(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exec of a script with no `#!` line fails (ENOEXEC), and the shell
    is started instead (cloned: in the same child), which runs it as a shell
    script: what it writes and how it ends are what they are through the
    shell alone (Popen)."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "noshebang"
    script.write_text('echo "run by $0" > ran.txt\nkill -TERM $$\n')
    script.chmod(0o755)
    argv = ("/bin/sh", "-e", "-c", "./noshebang > out.txt")
    assert PlainCommands().direct(argv, _env()) is not None  # (tried without the shell first)
    seen = []
    for starter in (spawner(), Starter(spawn=False)):
        child = starter.start(argv, None, _env(), stdin=devnull(), stdout=devnull(), stderr=devnull())
        code = child.wait()
        seen.append((code, (tmp_path / "ran.txt").read_text(), (tmp_path / "out.txt").read_text()))
        if isinstance(child, Child):
            assert child.start_error() is None
        (tmp_path / "ran.txt").unlink()
    assert seen[0] == seen[1]
    assert seen[0][1:] == ("run by ./noshebang\n", "")


def test_a_shell_started_in_a_programs_stead_ends_as_the_shell_does(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed by a signal, the shell that ran a script with no `#!` line ends
    with its own status (-N), not as a program started in its stead (128 + N)."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "noshebang"
    script.write_text("echo started > started.txt\nsleep 60\n")
    script.chmod(0o755)
    argv = ("/bin/sh", "-e", "-c", "./noshebang > out.txt")
    for starter in (spawner(), Starter(spawn=False)):
        child = starter.start(argv, None, _env(), stdin=devnull(), stdout=devnull(), stderr=devnull())
        try:
            while not (tmp_path / "started.txt").exists():
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGTERM)
            assert child.wait() == -signal.SIGTERM
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # (its sleep)
        (tmp_path / "started.txt").unlink()


def test_a_stage_running_a_script_without_a_shebang_builds(project: Project) -> None:
    project.write("make-out", "echo made\n")
    os.chmod(project.root / "make-out", 0o755)
    project.pivotfile("stage s:\n    deps: make-out\n    outs: out.txt\n    run: ./make-out > out.txt\n")
    r = project.run()
    assert r.code == 0, r.err
    assert (project.root / "out.txt").read_text() == "made\n"


def test_an_environment_the_c_library_cannot_take_as_it_is_still_reaches_the_stage(
    spawner: Spawner, tmp_path: Path
) -> None:
    """A value with a byte that is not UTF-8 (os.environ keeps it as a
    surrogate) reaches the stage as that byte, as through Popen (the clone
    passes such a stage to posix_spawn); a name with `=` is refused, as by
    Popen."""
    argv = ("/bin/sh", "-c", 'printf %s "$PROBE_VALUE"')
    seen = []
    for starter in (spawner(), Starter(spawn=False)):
        out_r, out_w = os.pipe()
        try:
            env = {**os.environ, "PROBE_VALUE": "a\udcffb"}
            child = starter.start(argv, None, env, stdin=devnull(), stdout=out_w, stderr=out_w)
        finally:
            os.close(out_w)
        with os.fdopen(out_r, "rb") as f:
            seen.append(f.read())
        assert child.wait() == 0
        if starter.spawns:
            assert isinstance(child, Child) and child.block is None  # (by posix_spawn)
        with pytest.raises(ValueError):
            starter.start(argv, None, {**os.environ, "A=B": "c"}, stdin=devnull(), stdout=devnull(), stderr=devnull())
    assert seen == [b"a\xffb", b"a\xffb"]


def test_a_clonespawn_built_from_another_version_of_its_source_is_left_alone(tmp_path: Path) -> None:
    """An editable install not rebuilt since the C file changed keeps an old
    build: spawn.py then starts stages by posix_spawn rather than call it
    with what it does not take."""
    code = """
import sys, types
old = types.ModuleType("pivotbuild.build.executors._clonespawn")
old.API = 0
sys.modules[old.__name__] = old
from pivotbuild.build.executors import spawn
assert spawn._clonespawn is None and not spawn.Starter().clones
print("left alone")
"""
    proc = run_script(code, [], tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "left alone\n"), proc.stderr


def test_clonespawn_refuses_actions_it_does_not_know() -> None:
    """Its actions are checked before any child is made: an unknown kind, an
    open with no file to open, a number that is not a plain int."""
    if spawn._clonespawn is None:
        pytest.skip("_clonespawn was not built at install (no C compiler here: test_the_clone_is_built_here)")
    start = spawn._clonespawn.start
    env = dict(os.environ)
    for acts, path in (([3, 0, 0], None), ([2, os.O_RDONLY, 1], None), ([0, True, 0], None), ([0, -1, 0], None)):
        with pytest.raises(ValueError):
            start("/bin/true", None, ["true"], env, False, acts, path, 0, 0, None)


def test_a_clone_the_kernel_refuses_falls_back_to_posix_spawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu-user (multi-platform container builds) refuses a clone of shared
    memory without CLONE_VFORK with EINVAL: the stage starts by posix_spawn
    instead, and so does every later one.  (A fake module here; the real
    refusal was seen under qemu-aarch64, docs/performance.md.)"""

    class Refusing:
        API = spawn._CLONESPAWN_API
        calls = 0
        error = errno.EINVAL

        @classmethod
        def start(cls, *args: object) -> tuple[int, object]:
            cls.calls += 1
            raise OSError(cls.error, os.strerror(cls.error))

    monkeypatch.setattr(spawn, "_clonespawn", Refusing)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("one\n")
    starter = Starter()
    assert starter.clones
    for script in ("cat in.txt > out.txt", "cat in.txt > out.txt; cat in.txt >> out.txt"):
        argv = ("/bin/sh", "-e", "-c", script)
        child = starter.start(argv, None, _env(), stdin=devnull(), stdout=devnull(), stderr=devnull())
        assert isinstance(child, Child) and child.block is None  # (by posix_spawn)
        assert child.wait() == 0
    assert (tmp_path / "out.txt").read_text() == "one\none\n"
    assert Refusing.calls == 1 and not starter.clones
    Refusing.error = errno.EAGAIN
    with pytest.raises(OSError):  # (any other error is the start's, as posix_spawn's would be)
        Starter().start(("/bin/sh", "-c", "true"), None, _env(), stdin=devnull(), stdout=devnull(), stderr=devnull())
