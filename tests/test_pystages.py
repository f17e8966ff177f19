"""`py: module:function` stages end to end: the real pivotbuild, its real
worker and runners (build/executors/pyworker.py), real files.  How runners
take stage after stage: test_pyrunners.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import PIVOTBUILD, Project
from helpers import HANG_GUARD_S, wait_until

STEPS = """
import os, sys

def square(ctx):
    n = int(open(ctx.deps[0]).read())
    print("squaring", n)
    print("a warning", file=sys.stderr)
    open(ctx.outs[0], "w").write(f"{n * n}\\n")

def show(ctx):
    lines = [
        f"name={ctx.name}",
        f"deps={list(ctx.deps)}",
        f"outs={list(ctx.outs)}",
        f"params={ctx.params['train']['lr']} {ctx.params['seed']}",
        f"matrix={dict(ctx.matrix)}",
        f"cwd={os.getcwd()}",
        f"stage={os.environ['PIVOT_STAGE']} greeting={os.environ['GREETING']}",
    ]
    open(ctx.outs[0], "w").write("\\n".join(lines) + "\\n")

def boom(ctx):
    helper()

def helper():
    raise ValueError("no good")

def leave(ctx):
    sys.exit(3)

def change(ctx):
    ctx.name = "other"

def hang(ctx):
    open("started.pid", "w").write(str(os.getpid()))
    import time
    time.sleep(60)
"""


def test_a_py_stage_builds_and_is_up_to_date_the_second_time(project: Project) -> None:
    project.write("steps.py", STEPS)
    project.write("in.txt", "7\n")
    project.pivotfile("stage sq:\n    deps: in.txt\n    outs: out.txt\n    py: steps:square\n")
    r = project.run("-v")
    assert r.code == 0, r
    assert (project.root / "out.txt").read_text() == "49\n"
    assert "sq | squaring 7" in r.out + r.err and "sq | a warning" in r.out + r.err  # captured, line by line
    r = project.run()
    assert r.code == 0, r
    assert "0 ran, 1 up to date" in r.err, r
    project.write("in.txt", "8\n")
    assert project.run().code == 0
    assert (project.root / "out.txt").read_text() == "64\n"


def test_the_function_gets_its_stages_context_directory_and_environment(project: Project) -> None:
    project.write("lib/steps.py", STEPS)
    project.write("lib/in.txt", "x\n")
    project.write("params.toml", "seed = 4\n[train]\nlr = 0.5\n")
    project.pivotfile(
        """
        stage show:
            matrix: size=small
            dir: lib
            deps: lib/in.txt
            outs: lib/out-${size}.txt
            params: train.lr seed
            env: GREETING=hello
            py: steps:show
        """
    )
    project.write("steps.py", "def show(ctx):\n    raise SystemExit('the pipeline directory comes first')\n")
    r = project.run()
    assert r.code == 1, r  # `steps` is imported from the pipeline directory, not from dir:
    project.write("steps.py", STEPS)
    r = project.run()
    assert r.code == 0, r
    assert (project.root / "lib" / "out-small.txt").read_text().splitlines() == [
        "name=show@small",
        "deps=['in.txt']",  # relative to the working directory, as $^ in a run: script
        "outs=['out-small.txt']",
        "params=0.5 4",
        "matrix={'size': 'small'}",
        f"cwd={project.root / 'lib'}",
        "stage=show@small greeting=hello",
    ]


def test_an_exception_fails_the_build_with_its_traceback(project: Project) -> None:
    project.write("steps.py", STEPS)
    project.pivotfile(
        "stage bad:\n    outs: a.txt\n    py: steps:boom\n\n"
        "stage after:\n    deps: a.txt\n    outs: b.txt\n    run: touch $@\n\n"
        "stage leaves:\n    outs: c.txt\n    py: steps:leave\n\n"
        "stage changes:\n    outs: d.txt\n    py: steps:change\n"
    )
    r = project.run("-k")
    assert r.code == 1, r
    assert "pivotbuild: stage bad failed (exit status 1)" in r.err, r.err
    line = (project.root / "steps.py").read_text().splitlines().index("    helper()") + 1
    tail = r.err.split("pivotbuild: last lines of bad:\n")[1].split("pivotbuild:")[0]
    assert tail.split("\n")[:3] == [
        "    Traceback (most recent call last):",  # the stage's own frames, not the worker's that called it
        f'      File "{project.root / "steps.py"}", line {line}, in boom',
        "        helper()",
    ], tail
    assert "ValueError: no good" in tail
    assert "pivotbuild: stage leaves failed (exit status 3)" in r.err  # sys.exit keeps its code
    assert "the stage's context is read-only (ctx.name)" in r.err
    assert not (project.root / "b.txt").exists()


def test_a_module_failing_to_import_shows_its_own_frames_not_importlibs(project: Project) -> None:
    project.write("steps.py", "import no_such_package_here\n\ndef run(ctx):\n    pass\n")
    project.pivotfile("stage s:\n    outs: s.txt\n    py: steps:run\n")
    r = project.run()
    assert r.code == 1, r
    tail = r.err.split("pivotbuild: last lines of s:\n")[1].split("pivotbuild:")[0]
    assert tail.splitlines() == [
        "    Traceback (most recent call last):",
        f'      File "{project.root / "steps.py"}", line 1, in <module>',
        "        import no_such_package_here",
        "    ModuleNotFoundError: No module named 'no_such_package_here'",
    ], tail


def test_a_timeout_kills_a_python_stage(project: Project) -> None:
    project.write("steps.py", STEPS)
    project.pivotfile("stage h:\n    outs: h.txt\n    timeout: 1s\n    py: steps:hang\n")
    t0 = time.monotonic()
    r = project.run()
    assert r.code == 1, r
    assert "pivotbuild: stage h failed (timed out after 1s)" in r.err, r.err
    assert time.monotonic() - t0 < HANG_GUARD_S
    _gone(int((project.root / "started.pid").read_text()))


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_a_running_python_stage_dies_with_its_build(project: Project, how: str) -> None:
    # Ctrl-C: the build kills it; SIGKILL: pivotbuild can do nothing, and its
    # worker, seeing it gone, kills the stage.
    project.write("steps.py", STEPS)
    project.pivotfile("stage h:\n    outs: h.txt\n    py: steps:hang\n")
    proc = subprocess.Popen([*PIVOTBUILD, "-s"], cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until((project.root / "started.pid").exists, HANG_GUARD_S, "the stage to start")
        wait_until((project.root / "started.pid").read_text, HANG_GUARD_S, "its pid")
        proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        assert proc.wait(timeout=HANG_GUARD_S) == (130 if how == "ctrl-c" else -signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _gone(int((project.root / "started.pid").read_text()))


def test_retry_runs_a_python_stage_again(project: Project) -> None:
    project.write(
        "flaky.py",
        """
        import os
        def run(ctx):
            n = int(open("count").read()) if os.path.exists("count") else 0
            open("count", "w").write(str(n + 1))
            if n == 0:
                raise RuntimeError("first time")
            open(ctx.outs[0], "w").write("ok")
        """,
    )
    project.pivotfile("stage f:\n    outs: f.txt\n    retry: 1\n    py: flaky:run\n")
    r = project.run()
    assert r.code == 0, r
    assert (project.root / "count").read_text() == "2"


def test_two_pipelines_each_run_their_own_module_of_the_same_name(project: Project) -> None:
    for name in ("one", "two"):
        project.write(f"{name}/steps.py", f"def run(ctx):\n    open(ctx.outs[0], 'w').write('{name}')\n")
        project.write(f"{name}/Pivotfile", "stage s:\n    outs: out.txt\n    py: steps:run\n")
    project.pivotfile("include one/\ninclude two/\n")
    r = project.run("-j1", "one:s", "two:s")
    assert r.code == 0, r
    assert (project.root / "one" / "out.txt").read_text() == "one"
    assert (project.root / "two" / "out.txt").read_text() == "two"


def _gone(pid: int) -> None:
    def dead() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(dead, HANG_GUARD_S, f"process {pid} to be gone")


FINGERPRINTED = """
stage sq:
    deps: in.txt
    outs: out.txt
    params: scale
    py: steps:square
"""

SQUARE = """
from helpers import fmt

def square(ctx):
    n = int(open(ctx.deps[0]).read())
    open(ctx.outs[0], "w").write(fmt(n * n * ctx.params["scale"]))

def unrelated(ctx):
    return 1
"""

HELPERS = """
def fmt(value):
    return f"{value}\\n"
"""


def explained(project: Project) -> dict[str, str]:
    """What `pivotbuild --explain --json` says of each stage: its status and reason."""
    r = project.run("--json", "--explain")
    assert r.code == 0, r
    import json

    events = [json.loads(line) for line in r.out.splitlines()]
    return {e["stage"]: e["reason"] for e in events if e.get("event") == "stage_finished" and e["status"] == "ran"}


def test_a_py_stage_reruns_when_its_code_changes_not_its_comments(project: Project) -> None:
    project.write("steps.py", SQUARE)
    project.write("helpers.py", HELPERS)
    project.write("in.txt", "3\n")
    project.write("params.toml", "scale = 2\nother = 1\n")
    project.pivotfile(FINGERPRINTED)
    assert explained(project) == {"sq": "never run"}
    assert (project.root / "out.txt").read_text() == "18\n"
    assert explained(project) == {}

    # Comments, docstrings, blank lines, formatting, an unrelated function: nothing runs.
    commented = SQUARE.replace("def square(ctx):", "def square(ctx):  # the square\n    'Square it.'\n")
    project.write("steps.py", '"""Steps."""\n' + commented)
    project.write("steps.py", (project.root / "steps.py").read_text().replace("return 1", "return 2"))
    project.write("helpers.py", "# helpers\n" + HELPERS + "\n\n")
    project.write("params.toml", "scale = 2\nother = 5\n")
    assert explained(project) == {}

    # The function's code, a helper it calls, a param it reads: each reruns it, named.
    project.write("steps.py", (project.root / "steps.py").read_text().replace("n * n *", "n * n * 1 *"))
    assert explained(project) == {"sq": "py steps.square changed"}
    project.write("helpers.py", HELPERS.replace("{value}", "{value}!"))
    assert explained(project) == {"sq": "py helpers.fmt changed"}
    assert (project.root / "out.txt").read_text() == "18!\n"
    project.write("params.toml", "scale = 3\nother = 5\n")
    assert explained(project) == {"sq": "param scale 2 -> 3"}


def test_a_no_op_of_py_stages_reads_no_file_and_still_sees_an_edit(project: Project) -> None:
    project.write("steps.py", SQUARE)
    project.write("helpers.py", HELPERS)
    project.write("in.txt", "3\n")
    project.write("params.toml", "scale = 2\n")
    project.pivotfile(FINGERPRINTED)
    assert project.run().code == 0
    time.sleep(0.05)  # (past the clock tick the build's own writes fell in: stamps that prove something)
    assert project.run().code == 0  # seals the stage with its sources' stamps
    r = project.run("--json")
    import json

    assert json.loads(r.out.splitlines()[-1])["files_read"] == 0
    project.write("helpers.py", HELPERS.replace("{value}", "<{value}>"))
    assert explained(project) == {"sq": "py helpers.fmt changed"}


def test_a_missing_module_or_function_is_a_located_error_of_check_and_build(project: Project) -> None:
    project.write("steps.py", SQUARE)
    project.write("helpers.py", HELPERS)
    project.pivotfile(
        "stage a:\n    outs: a.txt\n    py: steps:sqaure\n\nstage b:\n    outs: b.txt\n    py: nosuch:run\n"
    )
    check = project.run("check")
    assert check.code == 2, check
    build = project.run()
    assert build.err == check.err
    lines = check.err.splitlines()
    assert lines[0] == (
        "Pivotfile:3:9: error: module 'steps' has no function 'sqaure'; did you mean 'square'?;"
        " define it or fix 'py: steps:sqaure'"
    ), check.err
    assert lines[1:3] == ["        py: steps:sqaure", "            ^"]
    assert any(line.startswith("Pivotfile:7:9: error: module 'nosuch' not found under ") for line in lines), check.err
    assert not (project.root / "a.txt").exists()


def test_a_syntax_error_in_reached_code_is_located_in_the_python_file(project: Project) -> None:
    project.write("steps.py", SQUARE)
    project.write("helpers.py", "def fmt(value):\n    return (\n")
    project.pivotfile("stage a:\n    outs: a.txt\n    py: steps:square\n")
    r = project.run("check")
    assert r.code == 2, r
    assert r.err.startswith("helpers.py:"), r.err
    assert "in module 'helpers', which a py: stage reaches; fix it" in r.err


def test_a_py_stage_may_read_the_project_through_the_api_but_not_build_it(project: Project) -> None:
    project.write(
        "look.py",
        """
        import pivotbuild

        def look(ctx):
            project = pivotbuild.Project.load()
            open(ctx.outs[0], "w").write(repr(sorted(project.status().items())))

        def nested(ctx):
            pivotbuild.Project.load().build()
        """,
    )
    project.pivotfile(
        "stage look:\n    outs: look.txt\n    py: look:look\n\n"
        "stage nested:\n    deps: look.txt\n    outs: n.txt\n    py: look:nested\n"
    )
    r = project.run("-j1", timeout=2 * HANG_GUARD_S)
    assert r.code == 1, r
    assert (project.root / "look.txt").read_text() == "[('look', 'never run'), ('nested', 'upstream look will run')]"
    assert "Project.build() cannot run inside stage 'nested'" in r.err, r.err


def test_each_stage_imports_its_module_in_its_own_directory_and_environment(project: Project) -> None:
    project.write(
        "mod.py",
        """
        import os
        print("importing mod")
        SEEN = f"{os.environ.get('MODE')} {os.path.basename(os.getcwd())} {os.environ.get('PIVOT_STAGE')}"

        def run(ctx):
            open(ctx.outs[0], "w").write(SEEN)
        """,
    )
    project.write("sub/.keep", "")
    project.pivotfile(
        "stage a:\n    outs: a.txt\n    env: MODE=fast\n    py: mod:run\n\n"
        "stage b:\n    outs: sub/b.txt\n    dir: sub\n    env: MODE=slow\n    py: mod:run\n"
    )
    r = project.run("-j1", "-v")
    assert r.code == 0, r
    assert (project.root / "a.txt").read_text() == f"fast {project.root.name} a"
    assert (project.root / "sub" / "b.txt").read_text() == "slow sub b"  # as if built alone
    lines = (r.out + r.err).splitlines()
    assert lines.count("a | importing mod") == 1 and lines.count("b | importing mod") == 1, lines
    assert "importing mod" not in [line.strip() for line in lines]  # only ever a stage's output


def test_a_stage_runs_its_code_as_it_is_when_it_starts(project: Project) -> None:
    project.write(
        "steps.py",
        """
        import os, time
        def a(ctx):
            open("a.started", "w").write("")
            while not os.path.exists("go"):
                time.sleep(0.02)
            open(ctx.outs[0], "w").write("a")

        def b(ctx):
            open(ctx.outs[0], "w").write("OLD")
        """,
    )
    project.pivotfile(
        "stage a:\n    outs: a.txt\n    py: steps:a\n\nstage b:\n    deps: a.txt\n    outs: b.txt\n    py: steps:b\n"
    )
    proc = subprocess.Popen([*PIVOTBUILD, "-s"], cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until((project.root / "a.started").exists, HANG_GUARD_S, "a to start")
        steps = project.root / "steps.py"
        steps.write_text(steps.read_text().replace('"OLD"', '"NEW"'))  # while a runs
        (project.root / "go").write_text("")
        assert proc.wait(timeout=HANG_GUARD_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert (project.root / "b.txt").read_text() == "NEW"
    assert "0 ran, 2 up to date" in project.run().err


def test_a_project_module_named_like_a_standard_one_is_the_one_imported(project: Project) -> None:
    project.write("json.py", "MINE = 'the project json'\n")
    project.write("steps.py", "import json\n\ndef run(ctx):\n    open(ctx.outs[0], 'w').write(json.MINE)\n")
    project.pivotfile("stage s:\n    outs: s.txt\n    py: steps:run\n")
    r = project.run()
    assert r.code == 0, r
    assert (project.root / "s.txt").read_text() == "the project json"


def test_a_stage_has_its_streams_and_job_pool_and_ends_as_python_would(project: Project) -> None:
    project.write(
        "steps.py",
        """
        import atexit, os, re, threading, time

        def fds(ctx):
            pool = {int(f) for f in re.search(r"jobserver-fds=(\\d+),(\\d+)", os.environ["MAKEFLAGS"]).groups()}
            seen = {int(f) for f in os.listdir("/proc/self/fd")}
            inherited = {f for f in seen if is_open(f) and os.get_inheritable(f)} - {0, 1, 2} == pool
            own = [f for f in seen if is_open(f) and not os.get_inheritable(f)]  # (its runner's channel)
            open(ctx.outs[0], "w").write(repr((inherited, len(own))))

        def is_open(fd):
            try:
                os.fstat(fd)  # (not the listing's own descriptor, closed by now)
            except OSError:
                return False
            return True

        def later(ctx):
            atexit.register(lambda: open("atexit.txt", "w").write("ran"))
            def write():
                time.sleep(0.2)
                open(ctx.outs[0], "w").write("from a thread")
            threading.Thread(target=write).start()
        """,
    )
    project.pivotfile(
        "stage f:\n    outs: f.txt\n    py: steps:fds\n\nstage t:\n    outs: t.txt\n    py: steps:later\n"
    )
    r = project.run("-j2")
    assert r.code == 0, r
    # What it passes on: 0, 1, 2 and the job pool its MAKEFLAGS names, no more; beside them only its runner's channel
    assert (project.root / "f.txt").read_text() == "(True, 1)"
    assert (project.root / "t.txt").read_text() == "from a thread"  # the function's thread joined first
    assert (project.root / "atexit.txt").read_text() == "ran"
