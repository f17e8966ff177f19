"""The build server (cli/server.py, cli/client.py), end to end: the real
`pivotbuild` with PIVOT_SERVER=1 starts a resident server after its build,
and the builds after it run there, with the client's directory, umask,
environment and standard streams, its exit status and its signals.

A stage whose command goes through the shell writes `$PPID`, its parent:
the server's pid (its lock file names it) when the server ran the build,
another when the client built in its own process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project
from tracing import traced

from pivotbuild.state.stamps import Stamp

PPID_STAGE = """
stage who:
    deps: in.txt
    outs: ppid.txt
    run: cat in.txt > /dev/null; echo $PPID > ppid.txt
"""


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Builds go through servers that listen in a directory of this test's;
    every server started is stopped after it."""
    where = tmp_path / "servers"
    monkeypatch.setenv("PIVOT_SERVER", "1")
    monkeypatch.setenv("PIVOT_SERVER_DIR", str(where))
    monkeypatch.setenv("PIVOT_SERVER_IDLE", "600")
    try:
        yield where
    finally:
        for pid in server_pids(where):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 10)


def server_pids(where: Path) -> list[int]:
    pids = []
    for lock in where.glob("*.lock") if where.exists() else ():
        with contextlib.suppress(ValueError, OSError):
            pids.append(int(lock.read_text()))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (the test's own child) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def await_server(where: Path, count: int = 1, timeout: float = 20) -> int:
    """The pid of the newest server listening in `where` once `count` listen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        socks = list(where.glob("*.sock")) if where.exists() else []
        if len(socks) >= count:
            pids = [p for p in server_pids(where) if _alive(p)]
            if len(pids) >= count:
                newest = max(socks, key=lambda s: s.stat().st_mtime_ns)
                return int(newest.with_suffix(".lock").read_text())
        time.sleep(0.05)
    raise AssertionError(f"no server started in {where}: {sorted(os.listdir(where)) if where.exists() else '-'}")


def parent(p: Project) -> int:
    return int((p.root / "ppid.txt").read_text())


def served(p: Project, where: Path) -> int:
    """A first build (in the client: it starts the server), then the server's pid."""
    p.pivotfile(PPID_STAGE)
    p.write("in.txt", "one\n")
    first = p.run()
    assert first.code == 0, first.err
    return await_server(where)


def test_a_build_after_the_first_runs_in_the_server_and_says_what_a_build_says(project: Project, servers: Path) -> None:
    pid = served(project, servers)
    assert parent(project) != pid  # the first build ran in its own process
    project.write("in.txt", "two\n")
    r = project.run()
    assert r.code == 0, r.err
    assert parent(project) == pid
    assert "1 ran, 0 up to date" in r.out + r.err
    again = project.run()  # nothing changed: the no-op, through the server too
    assert again.code == 0 and "0 ran, 1 up to date" in again.out + again.err
    assert _alive(pid)


def test_a_server_that_sends_a_builds_copies_after_its_answer_serves_the_next_build(
    project: Project, servers: Path
) -> None:
    """The copies a served build keeps are sent to the disk by a thread of
    the server's after the answer (cache/copying.py's `Held`): a thread of
    its own, not one the build left behind, so the same server builds on."""
    pid = served(project, servers)
    big = (
        "stage big:\n    deps: in.txt\n    outs: big.bin\n"
        "    run: cat in.txt > /dev/null; head -c 3000000 /dev/urandom > big.bin; echo $PPID > big.pid\n"
    )
    project.pivotfile(PPID_STAGE + big)
    for k in range(3):
        project.write("in.txt", f"{k}\n")
        r = project.run()
        assert r.code == 0, r.err
        assert parent(project) == pid and int((project.root / "big.pid").read_text()) == pid, k
    data = (project.root / "big.bin").read_bytes()
    (project.root / "big.bin").unlink()
    assert project.run("checkout").code == 0
    assert (project.root / "big.bin").read_bytes() == data  # (the copy kept whole)
    assert _alive(pid)


def test_the_first_build_leaves_its_copies_to_the_server_it_starts_which_sends_them_and_serves_on(
    project: Project, servers: Path
) -> None:
    """The first build, in its own process, leaves the writeback of the
    copies it keeps to the server it starts (cache/copying.py's `Left`):
    the server begins it as it starts, so the object's pages are written
    within seconds, not the kernel's half a minute, and the same server
    serves the next build."""
    from pivotbuild.cache.pages import _Calls
    from pivotbuild.cache.store import Cache
    from pivotbuild.state.hashing import hash_file

    calls = _Calls.find()
    if calls is None:
        pytest.skip("no cachestat on this kernel (Linux 6.5+): whether a page is dirty cannot be told")
    project.pivotfile(
        "stage big:\n    deps: in.txt\n    outs: big.bin\n"
        "    run: cat in.txt > /dev/null; head -c 6000000 /dev/urandom > big.bin; echo $PPID > big.pid\n"
    )
    project.write("in.txt", "0\n")
    first = project.run()
    assert first.code == 0, first.err
    pid = await_server(servers)
    assert int((project.root / "big.pid").read_text()) != pid  # (the first build ran in its own process)
    obj = Cache(project.root / ".pivot" / "cache").path_of(hash_file(project.root / "big.bin"))
    assert obj.read_bytes() == (project.root / "big.bin").read_bytes()

    def dirty() -> bool | None:
        fd = os.open(obj, os.O_RDONLY)
        try:
            return calls._dirty(fd)
        finally:
            os.close(fd)

    deadline = time.monotonic() + 15
    while dirty() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dirty() is False  # (written out by the server's thread, well before the kernel's 30 s)
    project.write("in.txt", "1\n")
    r = project.run()
    assert r.code == 0, r.err
    assert int((project.root / "big.pid").read_text()) == pid  # the same server builds on
    assert _alive(pid)


def test_exit_statuses_and_failures_come_back_from_the_server(project: Project, servers: Path) -> None:
    pid = served(project, servers)
    project.write("in.txt", "two\n")
    q = project.run("-q")
    assert q.code == 1  # out of date: -q says so and runs nothing
    assert parent(project) != pid
    project.pivotfile(PPID_STAGE + "\nstage bad:\n    run: echo broken >&2; exit 3\n")
    r = project.run("-k")
    assert r.code == 1
    assert "broken" in r.err and "bad" in r.err
    assert parent(project) == pid  # -k went on with `who`, in the server


def test_the_client_directory_umask_and_environment_are_the_builds(project: Project, servers: Path) -> None:
    project.pivotfile("stage env:\n    deps: n.txt\n    outs: env.txt\n    run: echo $GREETING $PPID > env.txt\n")
    seen: dict[str, set[str]] = {}
    for n, greeting in enumerate(("hello", "bonjour", "hello")):  # another environment: another server
        env = {**os.environ, "GREETING": greeting, "NO_COLOR": "1"}
        for i in range(2):
            project.write("n.txt", f"{n} {i}\n")  # (the environment is not an input: a new one reruns nothing)
            subprocess.run(
                ["sh", "-c", f"umask 077; exec {' '.join(PIVOTBUILD)} -C {project.root.name}"],
                cwd=project.root.parent,
                env=env,
                capture_output=True,
                check=True,
                timeout=60,
            )
            said, ppid = (project.root / "env.txt").read_text().split()
            assert said == greeting
            assert stat.S_IMODE((project.root / "env.txt").stat().st_mode) == 0o600
            seen.setdefault(greeting, set()).add(ppid)
            await_server(servers, count=len(seen))
    pids = {str(pid) for pid in server_pids(servers)}
    assert len(pids) == 2
    assert len(pids & seen["hello"]) == 1 and len(pids & seen["bonjour"]) == 1
    assert pids & seen["hello"] != pids & seen["bonjour"]


def test_a_variable_set_for_one_served_build_is_gone_from_the_next_without_it(project: Project, servers: Path) -> None:
    """Variables that do not choose the server (COLUMNS, LINES...) come and go
    between the builds it serves: each build's stages see its own client's
    environment, a variable the last client had and this one lacks included."""
    project.pivotfile(
        "stage env:\n    deps: n.txt\n    outs: env.txt\n    run: echo $${COLUMNS-unset} $PPID > env.txt\n"
    )
    parents = set()
    for n, columns in enumerate((None, "132", None, "80", None)):
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        if columns is not None:
            env["COLUMNS"] = columns
        project.write("n.txt", f"{n}\n")
        subprocess.run(PIVOTBUILD, cwd=project.root, env=env, capture_output=True, check=True, timeout=60)
        said, ppid = (project.root / "env.txt").read_text().split()
        assert said == (columns or "unset")
        if n == 0:
            await_server(servers)  # (the first built in its own process, and started the server)
        else:
            parents.add(int(ppid))
    assert len(parents) == 1 and parents <= set(server_pids(servers))  # all served by one server


def test_a_pipe_reading_the_build_ends_with_the_client(project: Project, servers: Path) -> None:
    served(project, servers)
    project.write("in.txt", "two\n")
    # Project.run reads the output through pipes until they close: were the
    # server (idle for 600 s) to hold them open, this would time out.
    r = project.run(timeout=60)
    assert r.code == 0


def _start_slow(project: Project) -> subprocess.Popen[str]:
    """A build whose stage runs for 30 s, once its stage has started (it
    writes its pid, then its parent's, to slow.pid)."""
    slow = "stage slow:\n    outs: slow.txt\n    run: echo $$$$ $PPID > slow.pid; sleep 30; echo done > slow.txt\n"
    project.pivotfile(PPID_STAGE + "\n" + slow)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}  # (as Project.run: the same server)
    proc = subprocess.Popen(
        [*PIVOTBUILD], cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 20
    while len((project.root / "slow.pid").read_text().split()) != 2 if (project.root / "slow.pid").exists() else True:
        assert time.monotonic() < deadline, "the slow stage never started"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_a_client_interrupted_or_killed_stops_its_build_in_the_server(
    project: Project, servers: Path, how: signal.Signals
) -> None:
    pid = served(project, servers)
    proc = _start_slow(project)
    stage, stage_parent = map(int, (project.root / "slow.pid").read_text().split())
    assert stage_parent == pid  # the server runs it
    proc.send_signal(how)
    _out, err = proc.communicate(timeout=30)
    if how == signal.SIGINT:
        assert proc.returncode == 130
        assert "interrupted" in err.lower()
    assert _wait_gone(stage, 15), "the stage outlived its interrupted build"
    assert not (project.root / "slow.txt").exists()
    assert _alive(pid)  # the server goes on, and builds again (once it has put the build away: busy until then)
    project.pivotfile(PPID_STAGE)
    for attempt in range(50):
        project.write("in.txt", f"three {attempt}\n")
        r = project.run()
        assert r.code == 0, r.err
        if parent(project) == pid:
            break
        time.sleep(0.1)
    assert parent(project) == pid


def test_a_busy_server_leaves_the_next_build_to_its_own_process(
    project: Project, servers: Path, tmp_path: Path
) -> None:
    pid = served(project, servers)
    proc = _start_slow(project)
    try:
        other = Project(tmp_path / "other")
        (other.root / ".pivot").mkdir(parents=True)
        other.pivotfile(PPID_STAGE)
        other.write("in.txt", "x\n")
        r = other.run()
        assert r.code == 0, r.err
        assert parent(other) != pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_under_make_s_descriptor_jobserver_the_build_stays_in_make_s_child(project: Project, servers: Path) -> None:
    pid = served(project, servers)
    project.write("in.txt", "two\n")
    project.write("Makefile", f"all:\n\t+{' '.join(PIVOTBUILD)}\n")
    r = subprocess.run(["make", "-j2", "-s"], cwd=project.root, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert (project.root / "ppid.txt").read_text().strip() != str(pid)


def test_an_idle_server_exits_and_removes_its_socket(
    project: Project, servers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIVOT_SERVER_IDLE", "1")
    pid = served(project, servers)
    assert _wait_gone(pid, 20)
    assert not list(servers.glob("*.sock"))


def test_a_server_notes_a_changed_pivotbuild_file() -> None:
    from pivotbuild.cli import server

    files = server._Files()
    assert not files.changed()
    assert files.names and not files.changed()  # the same files, unchanged
    _as_loaded_before_an_edit(files.stamps, 0)
    assert files.changed()


def _as_loaded_before_an_edit(stamps: list[Stamp | None], k: int) -> None:
    found = stamps[k]
    assert found is not None
    size, mtime, inode, ctime = found
    stamps[k] = (size, mtime - 1, inode, ctime)


def test_a_server_notes_a_change_of_its_own_file_run_as_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs as `python -m pivotbuild.cli.server`: its own module is
    `__main__` (here a module of another name with the same file), and an
    edit of server.py alone must end it too."""
    import types

    from pivotbuild.cli import server

    files = server._Files()
    monkeypatch.delitem(sys.modules, "pivotbuild.cli.server")
    assert not files.changed()
    assert os.fsencode(server.__file__) not in files.names
    served = types.ModuleType("__served__")
    served.__file__ = server.__file__
    monkeypatch.setitem(sys.modules, "__served__", served)
    assert not files.changed()
    assert os.fsencode(server.__file__) in files.names
    _as_loaded_before_an_edit(files.stamps, files.names.index(os.fsencode(server.__file__)))
    assert files.changed()


PY_STEPS = """
import os

def square(ctx):
    n = int(open(ctx.deps[0]).read())
    print("squaring", n)
    open(ctx.outs[0], "w").write(f"{n * n} {os.getppid()}\\n")
"""


def test_py_stages_run_through_the_server_with_their_code_as_it_is_now(project: Project, servers: Path) -> None:
    pid = served(project, servers)
    project.write("steps.py", PY_STEPS)
    project.write("n.txt", "7\n")
    project.pivotfile(PPID_STAGE + "\nstage sq:\n    deps: n.txt\n    outs: sq.txt\n    py: steps:square\n")
    project.write("in.txt", "two\n")
    r = project.run()
    assert r.code == 0, r.err
    assert parent(project) == pid
    assert (project.root / "sq.txt").read_text().split()[0] == "49"
    project.write("steps.py", PY_STEPS.replace("n * n", "n * n + 1"))  # the step's code changed: it reruns
    r = project.run()
    assert r.code == 0, r.err
    assert (project.root / "sq.txt").read_text().split()[0] == "50"
    assert _alive(pid)


def test_at_most_eight_servers_run_and_a_dead_one_makes_room(project: Project, servers: Path) -> None:
    from pivotbuild.cli.client import MOST

    project.pivotfile(PPID_STAGE)
    project.write("in.txt", "one\n")

    def build_in_context(n: int) -> None:
        env = {**os.environ, "CONTEXT": str(n)}  # (each environment has its own server)
        subprocess.run([*PIVOTBUILD], cwd=project.root, env=env, capture_output=True, check=True, timeout=60)

    for n in range(MOST):
        build_in_context(n)
        await_server(servers, count=n + 1)
    build_in_context(MOST)
    time.sleep(1)  # (a server it had started would listen by now)
    running = [pid for pid in server_pids(servers) if _alive(pid)]
    assert len(running) == MOST and len(list(servers.glob("*.sock"))) == MOST
    os.kill(running[0], signal.SIGKILL)
    assert _wait_gone(running[0], 10)
    for lock in servers.glob("*.lock"):  # (a lock newer than 10 s may be a server's about to take it: aged)
        if lock.read_text().strip() == str(running[0]):
            os.utime(lock, (time.time() - 60, time.time() - 60))
    build_in_context(MOST + 1)
    await_server(servers, count=MOST)  # the dead one's socket and lock went; the new one listens
    assert len([pid for pid in server_pids(servers) if _alive(pid)]) == MOST
    assert running[0] not in server_pids(servers)


def _interpreter() -> str:
    """The Python that `pivotbuild` runs in (its script's #! line: the
    launcher's `pivotbuild-python` where `pivotbuild` is the launcher), so
    that a client written here has its context."""
    if len(PIVOTBUILD) != 1:
        return PIVOTBUILD[0]
    script = Path(PIVOTBUILD[0]).with_name("pivotbuild-python")
    first = (script if script.exists() else Path(PIVOTBUILD[0])).read_text().splitlines()[0]
    return first[2:].strip() if first.startswith("#!") else PIVOTBUILD[0]


# A client of the server's protocol that misbehaves: "linger S ARGS" builds,
# then keeps its connection open for S seconds; "quit ARGS" leaves as soon as
# the server has accepted its build.
RAW_CLIENT = """
import marshal, os, sys, time, _socket
from pivotbuild.cli import client
facts = client.context()
sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
sock.connect(os.path.join(client.directory(), client.name(facts) + ".sock"))
if sys.argv[1] == "linger":
    print(client._request(sock, sys.argv[3:], facts), flush=True)
    time.sleep(float(sys.argv[2]))
else:
    here = os.open(".", os.O_RDONLY)
    body = marshal.dumps({"argv": sys.argv[2:], "env": dict(os.environ), "umask": 0o022, "facts": facts, "pid": 0})
    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, client._fds(here, 0, 1, 2))]
    sock.sendmsg([len(body).to_bytes(4, "big") + body], rights)
    print(client.receive(sock), flush=True)
sock.close()
"""


def _raw(project: Project, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}  # (as Project.run: the same server)
    return subprocess.Popen(
        [_interpreter(), "-c", RAW_CLIENT, *args], cwd=project.root, env=env, stdout=subprocess.PIPE, text=True
    )


def test_a_client_that_lingers_after_its_build_does_not_interrupt_the_next(project: Project, servers: Path) -> None:
    pid = served(project, servers)
    lingering = _raw(project, "linger", "1.5", "-q")
    assert lingering.stdout is not None and lingering.stdout.readline().strip() == "0"
    project.pivotfile(PPID_STAGE + "\nstage slow:\n    outs: slow.txt\n    run: sleep 3; echo $PPID > slow.txt\n")
    r = project.run()  # its stage still runs when the lingering client goes
    lingering.communicate(timeout=30)
    assert r.code == 0, r.err
    assert (project.root / "slow.txt").read_text().strip() == str(pid)


def test_a_client_gone_as_soon_as_its_build_starts_interrupts_it(project: Project, servers: Path) -> None:
    pid = served(project, servers)
    project.pivotfile(
        PPID_STAGE + "\nstage slow:\n    outs: slow.txt\n    run: echo $$$$ > slow.pid; sleep 2; echo done > slow.txt\n"
    )
    for attempt in range(2):  # (the client leaves at once: the build is interrupted wherever it is)
        quitting = _raw(project, "quit")
        out, _ = quitting.communicate(timeout=30)
        assert "'ok': True" in out, out
        time.sleep(2.5)  # longer than the stage
        assert not (project.root / "slow.txt").exists(), f"attempt {attempt}: the build ran on without its client"
        if (project.root / "slow.pid").exists():
            assert _wait_gone(int((project.root / "slow.pid").read_text()), 10)
    assert _alive(pid)


def test_python_dash_m_pivotbuild_reaches_the_same_server(project: Project, servers: Path) -> None:
    pid = served(project, servers)
    for n in range(2):
        project.write("in.txt", f"again {n}\n")
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
        r = subprocess.run(
            [_interpreter(), "-m", "pivotbuild"],
            cwd=project.root,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert parent(project) == pid


@pytest.fixture
def short_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory of a short path (under /tmp), for server directories of an
    exact length; every server started under it is stopped after the test."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pvs", dir="/tmp"))
    monkeypatch.setenv("PIVOT_SERVER", "1")
    monkeypatch.setenv("PIVOT_SERVER_IDLE", "600")
    try:
        yield base
    finally:
        for where in base.iterdir():
            for pid in server_pids(where):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                _wait_gone(pid, 10)
        shutil.rmtree(base, ignore_errors=True)


def _server_dir(base: Path, length: int) -> Path:
    """A directory under `base` whose path is `length` bytes long."""
    where = base / ("d" * (length - len(str(base)) - 1))
    assert len(str(where)) == length
    return where


def test_a_server_listens_where_its_socket_path_takes_every_byte_allowed(
    project: Project, short_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NAME.sock (21 bytes) in a directory of 85: the 107 bytes a socket's path
    # may have.  The server binds under a shorter name, then moves the socket
    # into place (a name with its pid appended would not fit).
    where = _server_dir(short_base, 107 - len("/0123456789abcdef.sock"))
    monkeypatch.setenv("PIVOT_SERVER_DIR", str(where))
    pid = served(project, where)
    assert len(str(next(where.glob("*.sock")))) == 107
    project.write("in.txt", "two\n")
    assert project.run().code == 0
    assert parent(project) == pid  # built in the server


def test_a_server_directory_too_long_for_a_socket_means_builds_without_a_server(
    project: Project, short_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = _server_dir(short_base, 107 - len("/0123456789abcdef.sock") + 1)
    monkeypatch.setenv("PIVOT_SERVER_DIR", str(where))
    project.pivotfile(PPID_STAGE)
    for text in ("one\n", "two\n"):
        project.write("in.txt", text)
        r = project.run()
        assert r.code == 0 and r.err.count("\n") == 1, r.err  # the summary alone: nothing said of servers
    time.sleep(0.5)  # (time for a server to have started, had one been)
    assert not where.exists() or not list(where.iterdir())  # no socket, and no lock left behind


def test_the_seal_a_server_writes_once_idle_serves_the_next_no_op_anywhere(
    project: Project, servers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server seals once its client has the exit status (Engine.later),
    keeps the seal for its own next build, and writes it once no build has
    come for a moment: a no-op after that, even in a process of its own, is
    answered by the fast path."""
    pid = served(project, servers)
    project.write("in.txt", "two\n")
    r = project.run()
    assert r.code == 0 and parent(project) == pid
    _await_seal(project)
    monkeypatch.setenv("PIVOT_SERVER", "0")
    alone = traced(project)
    assert alone.code == 0, alone.err
    assert alone.fast, "the seal the server wrote did not hold"


def _await_seal(project: Project) -> None:
    """Until the seal is written after the last lockfile (at most 10 s)."""
    seal, lock = project.root / ".pivot" / "seal", project.root / "Pivotfile.lock"
    deadline = time.monotonic() + 10
    while not (seal.exists() and seal.stat().st_mtime_ns >= lock.stat().st_mtime_ns):
        assert time.monotonic() < deadline, "the server wrote no seal"
        time.sleep(0.01)


def test_builds_right_after_a_served_build_see_every_change_before_its_seal_is_written(
    project: Project, servers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build sent right after another through the server checks the seal
    that build left in memory, and a build in a process of its own (which
    finds the file older than the lockfile) decides by contents: neither
    misses an edit made in between."""
    pid = served(project, servers)
    project.pivotfile(
        PPID_STAGE.replace("outs: ppid.txt", "outs: ppid.txt out.txt").replace(
            "cat in.txt > /dev/null", "cp in.txt out.txt"
        )
    )
    assert project.run().code == 0  # (a Pivotfile changed: through the command line, in the server)
    for text in ("two\n", "three\n", "four\n"):
        project.write("in.txt", text)
        r = project.run()
        assert r.code == 0 and parent(project) == pid, r.err
        assert (project.root / "out.txt").read_text() == text, "a served build right after another missed an edit"
        assert "1 ran" in r.err
    project.write("in.txt", "five\n")
    monkeypatch.setenv("PIVOT_SERVER", "0")
    alone = project.run()
    assert alone.code == 0 and "1 ran" in alone.err, alone.err
    assert (project.root / "out.txt").read_text() == "five\n"


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_without_pivot_server_builds_go_through_a_server(
    project: Project, servers: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    """On by default (docs/server.md), also where CI is set to say no."""
    monkeypatch.delenv("PIVOT_SERVER")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pid = served(project, servers)
    project.write("in.txt", "two\n")
    r = project.run()
    assert r.code == 0, r.err
    assert parent(project) == pid


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_in_a_ci_job_builds_run_in_their_own_processes_and_start_no_server(
    project: Project, servers: Path, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.delenv("PIVOT_SERVER")
    monkeypatch.setenv("CI", ci)
    project.pivotfile(PPID_STAGE)
    project.write("in.txt", "one\n")
    for text in ("one\n", "two\n"):
        project.write("in.txt", text)
        r = project.run()
        assert r.code == 0, r.err
    assert not servers.exists()  # (not even looked for: a CI job's builds leave no process behind)
    monkeypatch.setenv("PIVOT_SERVER", "1")  # said outright, it wins
    pid = served(project, servers)
    project.write("in.txt", "three\n")
    assert project.run().code == 0
    assert parent(project) == pid


def test_a_build_whose_output_is_closed_early_fails_as_in_its_own_process_and_the_server_serves_on(
    project: Project, servers: Path
) -> None:
    """`pivotbuild | head -1` through the server: the build fails (status 1,
    as in a process of its own: its output is gone), answered by the server,
    whose build went through the command line (the Pivotfile changed), where
    click leaves by SystemExit; the build after it builds (in that server, or
    in a new one where the stage was still running: a child left behind)."""
    served(project, servers)
    project.pivotfile(PPID_STAGE + "\nstage loud:\n    outs: loud.txt\n    run: seq 1 50000; echo done > loud.txt\n")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(PIVOTBUILD, cwd=project.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1
    project.write("in.txt", "two\n")
    r = project.run()
    assert r.code == 0, r.err
    assert (project.root / "loud.txt").read_text() == "done\n"
    await_server(servers)


def test_a_lockfile_lost_right_after_a_served_build_is_restored_from_the_cache_s_copy(
    project: Project, servers: Path
) -> None:
    """The cache's copy of a lockfile is written before the server answers (a
    copy written once it is idle would be the build before's for a moment):
    a build that finds the lockfile gone right after restores its stages
    from that copy, rather than running them."""
    pid = served(project, servers)
    project.write("in.txt", "two\n")
    assert project.run().code == 0 and parent(project) == pid
    (project.root / "Pivotfile.lock").unlink()
    r = project.run()
    assert r.code == 0 and "1 restored" in r.err, r.err
    assert parent(project) == pid  # (the output as the server's build made it)


def test_a_project_removed_right_after_a_served_build_stays_removed(project: Project, servers: Path) -> None:
    """What a server does for a build once its client has the answer (the
    seal, made then, and written when idle) takes the project lock without
    making its file: a script that removes its project right after its last
    build (as a temporary directory is removed) does not find `.pivot/`
    made again, and the server serves on."""
    pid = served(project, servers)
    for text in ("two\n", "three\n"):
        project.write("in.txt", text)
        assert project.run().code == 0 and parent(project) == pid
    shutil.rmtree(project.root)
    time.sleep(0.5)  # (a server writes its seal 50 ms after the last build)
    assert not project.root.exists(), sorted(str(p) for p in project.root.rglob("*"))
    assert _alive(pid)


def test_a_served_build_s_run_cache_entries_serve_the_next_build(project: Project, servers: Path) -> None:
    """A server appends a build's run-cache entries once its client has the
    answer (Engine._run, OutputCache.close_runs): the next build, sent right
    after, restores a stage whose inputs went back to what they were,
    instead of running it."""
    project.pivotfile("stage copy:\n    deps: in.txt\n    outs: out.txt\n    run: cp in.txt out.txt\n")
    project.write("in.txt", "one\n")
    assert project.run().code == 0  # (in its own process: it starts the server)
    await_server(servers)
    for text, said in (("two\n", "1 ran"), ("three\n", "1 ran"), ("two\n", "1 restored"), ("three\n", "1 restored")):
        project.write("in.txt", text)
        r = project.run()
        assert r.code == 0 and said in r.err, r.err
        assert (project.root / "out.txt").read_text() == text


def test_a_warm_server_s_first_build_imports_nothing(project: Project, tmp_path: Path) -> None:
    """A server imports at its start what a build with work imports
    (Server.warm), so its first build, which its client waits for, imports
    no module of pivotbuild's (nor zstd) as it runs."""
    project.pivotfile(
        "stage a:\n    deps: in.txt\n    outs: a.txt\n    run: cat in.txt > a.txt\n\n"
        "stage b:\n    deps: a.txt\n    outs: b.txt\n    run: cat a.txt a.txt > b.txt\n"
    )
    project.write("in.txt", "one\n")
    assert project.run().code == 0
    project.write("in.txt", "two\n")
    where = tmp_path / "servers"
    where.mkdir(mode=0o700)
    code = f"""
import os, sys
from pivotbuild.cli import main
from pivotbuild.cli.residents import Residents
from pivotbuild.cli.server import Server
Server({str(where)!r}).warm()
before = set(sys.modules)
os.chdir({str(project.root)!r})
status = main(["-j2", "-s"], residents=Residents())
print(status, sorted(m for m in set(sys.modules) - before if m.startswith(("pivotbuild", "zstandard"))))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "0 []", proc.stdout + proc.stderr
    assert (project.root / "b.txt").read_text() == "two\ntwo\n"


def test_a_param_changed_between_served_builds_reruns_its_stage(project: Project, servers: Path) -> None:
    """A server decides the same stages build after build, keeping what their
    snapshots take from them alone (snapshot.take's `kept`); a param's new
    value is a new stage (the plan compiled again), decided afresh."""
    project.write("params.toml", "[train]\nepochs = 10\n")
    project.pivotfile(
        "stage train:\n    deps: in.txt\n    params: train.epochs\n    outs: out.txt\n"
        "    run: echo ${params.train.epochs} > out.txt\n"
    )
    project.write("in.txt", "one\n")
    assert project.run().code == 0  # (in its own process: it starts the server)
    await_server(servers)
    project.write("in.txt", "two\n")
    assert "1 ran" in project.run().err
    for epochs in ("20", "30"):
        project.write("params.toml", f"[train]\nepochs = {epochs}\n")
        r = project.run()
        assert r.code == 0 and "1 ran" in r.err, r.err
        assert (project.root / "out.txt").read_text() == f"{epochs}\n"


def test_a_served_hardlink_rerun_that_lets_go_of_an_old_version_keeps_its_server(
    project: Project, servers: Path
) -> None:
    """The thread that drops a rerun's old object's pages (cache/pages.py)
    lives as long as the server: it is not a thread a build left behind,
    which would make the next build start a new server."""
    project.pivotfile(
        "stage big:\n    deps: seed.txt\n    outs: big.bin\n"
        "    run: python3 -c \"import sys; sys.stdout.buffer.write(open('seed.txt','rb').read() * 40000)\" > $@"
        " && echo $PPID > ppid.txt\n"
    )
    project.write(".pivot/config.toml", '[core]\ncheckout = "hardlink"\n')
    project.write("seed.txt", "a" * 63 + "\n")
    assert project.run().code == 0  # (in its own process: it starts the server)
    pid = await_server(servers)
    for seed in ("b", "c", "a"):
        os.sync()  # (the old version written back: its pages can go)
        project.write("seed.txt", seed * 63 + "\n")
        r = project.run()
        assert r.code == 0, r.err
        assert (project.root / "big.bin").read_bytes() == (seed * 63 + "\n").encode() * 40000
    assert "1 restored" in r.err  # (the first version, from the cache)
    assert parent(project) == pid, (server_pids(servers), pid)  # (the "c" build's stage: it ran in the first server)
    assert _alive(pid) and await_server(servers) == pid
