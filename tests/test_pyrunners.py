"""`py:` stages run one after another in a runner (build/executors/pyworker.py),
end to end: the real pivotbuild, real processes, real files.  A stage of the
same module, directory and environment as the last one a runner ran reuses
that process (its module loaded), each with its own directory, environment,
context and streams; a stage that leaves anything behind that the next would
see ends its runner instead, as a process of its own would end."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import Project, Result
from helpers import HANG_GUARD_S

STEPS = """
import logging, os, sys, threading, time  # (logging registers an atexit function as it is imported)
print("importing steps")
LOG = open("log.txt", "a")  # held by the module from one stage to the next

def record(ctx):
    print("running", ctx.name)
    LOG.write(ctx.name + "\\n")
    LOG.flush()
    mask = os.umask(0o022)
    os.umask(mask)
    with open(ctx.outs[0], "w") as f:
        f.write(repr({
            "pid": os.getpid(),
            "stage": os.environ["PIVOT_STAGE"],
            "leak": os.environ.get("LEAK"),
            "cwd": os.path.basename(os.getcwd()),
            "path0": sys.path[0],
            "deps": list(ctx.deps),
            "umask": oct(mask),
            "argv": list(sys.argv),
        }))

def meddle(ctx):
    record(ctx)
    os.environ["LEAK"] = "yes"
    os.chdir("/")
    sys.path.insert(0, "/nowhere")

def thread(ctx):
    record(ctx)
    threading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()

def umask(ctx):
    record(ctx)
    os.umask(0o077)

def boom(ctx):
    record(ctx)
    raise ValueError("no good")

def child(ctx):
    import subprocess
    record(ctx)
    subprocess.Popen(["sleep", "0.3"], stdout=subprocess.DEVNULL)

def sigchld(ctx):
    import signal
    record(ctx)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)

def alarm(ctx):
    import signal
    record(ctx)
    signal.alarm(60)

def warn(ctx):
    import warnings
    record(ctx)
    warnings.simplefilter("ignore")

def argv(ctx):
    record(ctx)
    sys.argv.append("more")

def joined(ctx):
    worker = threading.Thread(target=print, args=("from a thread",))
    worker.start()
    worker.join()
    record(ctx)

def closes_pool(ctx):
    import re
    record(ctx)
    for fd in re.search(r"--jobserver-fds=(\\d+),(\\d+)", os.environ["MAKEFLAGS"]).groups():
        os.close(int(fd))

def kills_worker(ctx):
    import signal
    os.kill(os.getppid(), signal.SIGKILL)  # (a runner's parent is the worker)
    time.sleep(0.5)

def tempdir(ctx):
    import tempfile
    with tempfile.TemporaryDirectory() as scratch:
        open(os.path.join(scratch, "x"), "w").write("x")
    record(ctx)

KEPT = []

def tempdir_kept(ctx):
    import tempfile
    KEPT.append(tempfile.TemporaryDirectory())
    open("kept.txt", "w").write(KEPT[-1].name)
    record(ctx)

def hang(ctx):
    open("hung.pid", "w").write(str(os.getpid()))
    time.sleep(60)

def closes_all(ctx):
    record(ctx)
    os.closerange(0, 4096)  # its streams, and its runner's channel
    time.sleep(0.3)
"""


def _chain(project: Project, functions: list[str], *, steps: str = STEPS) -> None:
    """Stages s0, s1, ... each depending on the last's output, calling `functions` in turn."""
    project.write("steps.py", steps)
    stages = []
    for i, fn in enumerate(functions):
        deps = f"    deps: o{i - 1}.txt\n" if i else ""
        stages.append(f"stage s{i}:\n{deps}    outs: o{i}.txt\n    py: steps:{fn}\n")
    project.pivotfile("\n".join(stages))


def _a_then_b_and_c(project: Project, b: str) -> None:
    """Stage a, then b (its fields `b`) and c, both after a; a and c record."""
    project.write("steps.py", STEPS)
    project.pivotfile(
        "stage a:\n    outs: o0.txt\n    py: steps:record\n\n"
        f"stage b:\n    deps: o0.txt\n    outs: o1.txt\n{b}\n"
        "stage c:\n    deps: o0.txt\n    outs: o2.txt\n    py: steps:record\n"
    )


def _built(
    project: Project, functions: list[str], *args: str, steps: str = STEPS
) -> tuple[Result, list[dict[str, object]]]:
    """The chain of `functions` built: the result, and what each stage saw."""
    _chain(project, functions, steps=steps)
    r = project.run(*args)
    assert r.code == 0, r
    return r, [_seen(project, i) for i in range(len(functions))]


def _seen(project: Project, i: int) -> dict[str, object]:
    seen: dict[str, object] = eval((project.root / f"o{i}.txt").read_text())
    return seen


def test_stages_of_one_module_share_a_process_each_with_its_own_setting(project: Project) -> None:
    r, seen = _built(project, ["meddle", "record", "record"], "-v")
    assert seen[0]["pid"] == seen[1]["pid"] == seen[2]["pid"], seen  # one process, its module imported once
    assert [s["stage"] for s in seen] == ["s0", "s1", "s2"]
    assert seen[1]["deps"] == ["o0.txt"] and seen[2]["deps"] == ["o1.txt"]
    # what s0 changed of its process reaches no later stage
    assert seen[1]["leak"] is None and seen[1]["cwd"] == project.root.name and seen[1]["path0"] == str(project.root)
    # what its module holds stays its own: the module's log got every stage's line
    assert (project.root / "log.txt").read_text().split() == ["s0", "s1", "s2"]
    lines = (r.out + r.err).splitlines()
    assert sum("importing steps" in line for line in lines) == 1, lines
    assert "s0 | importing steps" in lines and "s2 | running s2" in lines, lines


def test_a_stage_that_leaves_something_behind_ends_its_process(project: Project) -> None:
    # each of these leaves what the next stage would see: the next gets a new process
    _, seen = _built(project, ["thread", "umask", "child", "record", "record"])
    pids = [s["pid"] for s in seen]
    assert len(set(pids[:4])) == 4, pids  # a running thread, a umask, a child process: each ended its process
    assert pids[3] == pids[4], pids  # a stage that left nothing: the next shares its process
    assert seen[2]["umask"] == seen[0]["umask"] != "0o77", seen  # not the umask s1 set


def test_a_stage_that_changes_a_process_wide_setting_ends_its_process(project: Project) -> None:
    # a signal's handler, an alarm, warnings' filters: each would reach the next stage
    _, seen = _built(project, ["sigchld", "alarm", "warn", "argv", "record"])
    pids = [s["pid"] for s in seen]
    assert len(set(pids[:4])) == 4, pids
    assert pids[3] == pids[4], pids  # sys.argv is each stage's again: no need for a new process
    assert seen[4]["argv"] == seen[3]["argv"], seen


def test_a_stage_whose_thread_has_ended_keeps_its_process(project: Project) -> None:
    _, seen = _built(project, ["joined", "joined", "record"], "-j1")
    assert len({s["pid"] for s in seen}) == 1


def test_an_atexit_function_a_stage_brings_in_runs_as_it_ends(project: Project) -> None:
    # a module the function imports registers one (as logging does when first
    # imported): it runs as the stage ends, in its output, as in a process of its own
    project.write("registers.py", "import atexit\n\natexit.register(print, 'registers: at exit')\n")
    steps = STEPS + "\ndef lazy(ctx):\n    import registers\n    record(ctx)\n"
    r, seen = _built(project, ["lazy", "record", "record"], "-j1", "-v", steps=steps)
    pids = [s["pid"] for s in seen]
    assert pids[0] != pids[1] == pids[2], pids
    assert "s0 | registers: at exit" in r.out.splitlines(), r.out


def test_a_runner_let_go_runs_its_modules_atexit_functions(project: Project) -> None:
    # (as the module's process would as it ended: once per runner, at the build's end here)
    steps = STEPS + "\nimport atexit\natexit.register(lambda: open('atexit.log', 'a').write('ran\\n'))\n"
    _, seen = _built(project, ["record", "record", "record"], "-j1", steps=steps)
    assert len({s["pid"] for s in seen}) == 1
    assert (project.root / "atexit.log").read_text() == "ran\n"


def test_a_temporary_directory_cleaned_up_keeps_the_process_one_left_ends_it(project: Project) -> None:
    # (the first weakref.finalize of a process registers an atexit function: the worker made it)
    _, seen = _built(project, ["tempdir", "tempdir", "tempdir_kept", "record"], "-j1")
    pids = [s["pid"] for s in seen]
    assert pids[0] == pids[1] == pids[2] != pids[3], pids
    assert not Path((project.root / "kept.txt").read_text()).exists()  # removed as its stage's process ended


def test_a_runner_let_go_does_not_wait_for_its_modules_thread(project: Project) -> None:
    # (a thread the module started at import, not a daemon: the runner ends all the same,
    # its module's atexit function run; a process of its own would wait for the thread forever)
    steps = STEPS + (
        "\nimport atexit\natexit.register(lambda: open('atexit.log', 'a').write('ran\\n'))\n"
        "threading.Thread(target=time.sleep, args=(3600,)).start()\n"
    )
    _, seen = _built(project, ["record", "record"], "-j1", steps=steps)
    assert seen[0]["pid"] == seen[1]["pid"]
    assert (project.root / "atexit.log").read_text() == "ran\n"


def test_a_temporary_directory_made_at_import_may_be_cleaned_up_by_a_stage(project: Project) -> None:
    steps = STEPS + (
        "\nimport tempfile\nSCRATCH = tempfile.TemporaryDirectory()\n\n"
        "def clean(ctx):\n    SCRATCH.cleanup()\n    record(ctx)\n"
    )
    _, seen = _built(project, ["clean", "record"], "-j1", steps=steps)
    assert seen[0]["pid"] == seen[1]["pid"]


POOL = """
def pool(ctx):
    import re, subprocess
    named = {int(f) for f in re.search(r"--jobserver-fds=(\\d+),(\\d+)", os.environ["MAKEFLAGS"]).groups()}
    passed = {f for f in map(int, os.listdir("/proc/self/fd")) if is_open(f) and os.get_inheritable(f)} - {0, 1, 2}
    with open("pool.mk", "w") as mk:
        mk.write("all: a b\\na b:\\n\\t@echo $@\\n")
    made = subprocess.run(["make", "-f", "pool.mk"], capture_output=True, text=True, close_fds=False)
    record(ctx)
    with open(ctx.outs[0] + ".pool", "w") as f:
        f.write(repr((passed == named, made.returncode, made.stderr)))

def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

HELD = [open(os.devnull) for _ in range(16)]  # (descriptors the module holds: 3 and up)
"""


def test_a_module_holding_descriptors_shares_its_runner_and_its_stages_get_the_job_pool(project: Project) -> None:
    # (where the build's job pool goes in the stage is no matter: MAKEFLAGS names where it is)
    _, seen = _built(project, ["record", "pool", "pool"], "-j2", steps=STEPS + POOL)
    assert len({s["pid"] for s in seen}) == 1
    for i in (1, 2):
        assert (project.root / f"o{i}.txt.pool").read_text() == repr((True, 0, ""))  # make used the pool, quietly


def test_a_runner_too_full_to_take_a_stages_descriptors_fails_it_saying_why(project: Project) -> None:
    # (its module holds every descriptor number but one below its limit)
    full = """
import resource
HELD, TOP = [], max(map(int, os.listdir("/proc/self/fd")))
while (f := os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)) <= TOP:
    HELD.append(f)
os.close(f)
resource.setrlimit(resource.RLIMIT_NOFILE, (TOP + 2, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
"""
    _chain(project, ["record", "record"], steps=STEPS + full)
    r = project.run("-j2")
    assert r.code == 1, r
    assert "pivotbuild: stage s1 failed" in r.err, r.err
    assert "could not take its descriptors" in r.err, r.err


def test_a_stage_that_closes_its_job_pool_succeeds_and_ends_its_process(project: Project) -> None:
    _, seen = _built(project, ["closes_pool", "record"], "-j2")
    assert seen[0]["pid"] != seen[1]["pid"]


def test_stages_after_one_that_killed_the_worker_run_in_a_new_one(project: Project) -> None:
    project.write("steps.py", STEPS)
    project.pivotfile(
        "stage a:\n    outs: o0.txt\n    py: steps:kills_worker\n\n"
        + "".join(f"stage s{i}:\n    deps: o9.txt\n    outs: o{i}.txt\n    py: steps:record\n\n" for i in (1, 2, 3))
        + "stage first:\n    outs: o9.txt\n    py: steps:record\n"
    )
    r = project.run("-j1", "-k")
    assert r.code == 1, r
    assert "pivotbuild: stage a failed" in r.err, r.err
    assert "4 ran" in r.err and "1 failed" in r.err, r.err
    assert len({_seen(project, i)["pid"] for i in (1, 2, 3)}) == 1  # one runner again, in the new worker


def test_a_stage_that_fails_ends_its_process_and_the_next_runs_afresh(project: Project) -> None:
    _a_then_b_and_c(project, "    py: steps:boom\n")
    r = project.run("-j1", "-k")
    assert r.code == 1, r
    assert "ValueError: no good" in r.err, r.err
    assert "1 failed" in r.err, r.err
    pids = {(project.root / f"o{i}.txt").exists() and _seen(project, i)["pid"] for i in (0, 2)}
    assert len(pids) == 2, pids  # b took a's process down with it; c has one of its own


def test_a_stage_that_closes_every_descriptor_still_ends_and_is_followed(project: Project) -> None:
    _chain(project, ["closes_all", "record"])
    t0 = time.monotonic()
    r = project.run(timeout=HANG_GUARD_S)
    assert r.code == 0, r
    assert time.monotonic() - t0 < HANG_GUARD_S
    assert _seen(project, 0)["pid"] != _seen(project, 1)["pid"]  # its channel gone, its process ended


def test_a_timeout_in_a_shared_process_kills_that_stage_only(project: Project) -> None:
    _a_then_b_and_c(project, "    timeout: 1s\n    py: steps:hang\n")
    r = project.run("-j2", "-k", timeout=HANG_GUARD_S)
    assert r.code == 1, r
    assert "pivotbuild: stage b failed (timed out after 1s)" in r.err, r.err
    assert "1 failed" in r.err and (project.root / "o2.txt").exists(), r.err
    hung = int((project.root / "hung.pid").read_text())
    assert hung == _seen(project, 0)["pid"]  # (b ran in a's process: the timeout took that down, not c's)
    try:
        os.kill(hung, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"the timed-out stage's process {hung} is still alive")
