"""Stages beyond a shell command on the Dask executor, and their output
shown as they print it (daskstream.py), against a real local
cluster (the `cluster` fixture, daskcluster.py): `py:` stages, whose
project code travels with their inputs (build/executors/dask.py `_carried`,
dasktask.py, pyworker.py `--once`), and `persist` and `incremental` outputs,
which the stage finds in its scratch directory as it would in the project."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import Project
from daskcluster import Cluster
from test_dask_executor import _on_cluster

STEPS = """
import os, sys
from helper import fmt

def show(ctx):
    lines = [
        fmt("name", ctx.name),
        fmt("deps", list(ctx.deps)),
        fmt("outs", list(ctx.outs)),
        fmt("params", ctx.params),
        fmt("matrix", dict(ctx.matrix)),
        fmt("read", open(ctx.deps[0]).read().strip()),
        fmt("env", " ".join(
            [os.environ["PIVOT_STAGE"], os.environ["GREETING"], os.environ.get("PIVOT_LEAK", "unset")]
        )),
        fmt("cwd", os.getcwd()),
    ]
    print("showing", ctx.name)
    open(ctx.outs[0], "w").write("\\n".join(lines) + "\\n")

def boom(ctx):
    helper()

def helper():
    raise ValueError("no good on the cluster")

def leave(ctx):
    sys.exit(3)

def extra(ctx):
    import pivot_extra_pkg
    open(ctx.outs[0], "w").write(pivot_extra_pkg.VALUE)
"""

# The pipeline in sub/ (its directory first on sys.path), its helper module
# at the root (second).
PIPELINE = """
stage show:
    matrix: n=1 2
    deps: in-${n}.txt
    outs: out-${n}.txt
    params: scale
    env: GREETING=hello
    py: steps:show
"""


def _with_remote(project: Project, tmp_path: Path) -> Project:
    remote = tmp_path / "remote"
    remote.mkdir()
    ran = project.run("remote", "add", "--default", "shared", str(remote))
    assert ran.code == 0, ran.err
    return project


def _ran_on_a_worker(cluster: Cluster, where: str) -> bool:
    return any(Path(where).is_relative_to(w / "tmp") for w in cluster.workers)


def test_a_py_stage_runs_on_a_worker_with_its_helper_module_and_context_and_is_then_up_to_date(
    project: Project, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_remote(project, tmp_path)
    project.pivotfile("include sub/\n")
    project.pivotfile(PIPELINE, "sub/Pivotfile")
    project.write("sub/steps.py", STEPS)
    project.write("sub/params.toml", "scale = 3\n")
    project.write("helper.py", 'def fmt(key, value):\n    return f"{key}={value}"\n')
    for n in (1, 2):
        project.write(f"sub/in-{n}.txt", f"input {n}\n")
    monkeypatch.setenv("PIVOT_LEAK", "leaked")  # pivotbuild's own environment: it must not reach the stages
    ran = project.run("-j", "2", "-v", "--executor", cluster.address)
    assert ran.code == 0, ran.out + ran.err
    assert "showing sub:show@1" in ran.out + ran.err  # its output, captured
    for n in (1, 2):
        lines = (project.root / f"sub/out-{n}.txt").read_text().splitlines()
        assert lines[:-1] == [
            f"name=sub:show@{n}",
            f"deps=['in-{n}.txt']",
            f"outs=['out-{n}.txt']",
            "params={'scale': 3}",
            f"matrix={{'n': '{n}'}}",
            f"read=input {n}",
            f"env=sub:show@{n} hello unset",
        ]
        cwd = lines[-1].removeprefix("cwd=")
        assert _ran_on_a_worker(cluster, cwd) and Path(cwd).name == "sub", cwd  # its directory, in scratch
        assert not Path(cwd).exists()  # (the scratch directory is removed)
    assert project.run("-q").code == 0  # up to date, without the executor

    project.write("helper.py", 'def fmt(key, value):\n    return f"{key}: {value}"\n')
    assert project.run("-q").code == 1  # the helper is part of the stage's code
    ran = project.run("--executor", cluster.address, "sub:show@1")
    assert ran.code == 0, ran.out + ran.err
    lines = (project.root / "sub/out-1.txt").read_text().splitlines()
    assert lines[0] == "name: sub:show@1" and _ran_on_a_worker(cluster, lines[-1].removeprefix("cwd: "))
    assert project.run("-q", "sub:show@1").code == 0


def test_an_exception_on_a_worker_fails_the_build_with_the_stages_traceback_and_sys_exit_keeps_its_code(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _with_remote(project, tmp_path)
    project.write("steps.py", STEPS)
    project.write("helper.py", "def fmt(key, value):\n    return ''\n")
    project.pivotfile(
        "stage bad:\n    outs: a.txt\n    py: steps:boom\n\nstage leaves:\n    outs: c.txt\n    py: steps:leave\n"
    )
    ran = project.run("-k", "--executor", cluster.address)
    assert ran.code == 1, ran.out + ran.err
    assert "pivotbuild: stage bad failed (exit status 1)" in ran.err, ran.err
    assert "pivotbuild: stage leaves failed (exit status 3)" in ran.err  # sys.exit keeps its code, as locally
    tail = ran.err.split("pivotbuild: last lines of bad:\n")[1].split("pivotbuild:")[0]
    lines = tail.splitlines()
    assert lines[0] == "    Traceback (most recent call last):", tail  # the stage's own frames only
    line = STEPS.lstrip("\n").splitlines().index("    helper()") + 1
    assert lines[1].startswith('      File "') and lines[1].endswith(f'/steps.py", line {line}, in boom'), tail
    assert _ran_on_a_worker(cluster, lines[1].split('"')[1])  # (the module imported from scratch)
    assert lines[2] == "        helper()", tail
    assert "ValueError: no good on the cluster" in tail
    assert "pyworker" not in tail and "dasktask" not in tail
    assert not (project.root / "a.txt").exists()


def test_a_package_missing_on_the_workers_fails_the_stage_naming_the_worker(
    project: Project, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_remote(project, tmp_path)
    project.write("steps.py", STEPS)
    project.write("helper.py", "def fmt(key, value):\n    return ''\n")
    project.pivotfile("stage extra:\n    outs: e.txt\n    py: steps:extra\n")
    installed = tmp_path / "site"  # installed for pivotbuild here, not on the workers
    (installed / "pivot_extra_pkg").mkdir(parents=True)
    (installed / "pivot_extra_pkg/__init__.py").write_text("VALUE = 'from the package'\n")
    monkeypatch.setenv("PYTHONPATH", str(installed))
    ran = project.run("--executor", cluster.address)
    assert ran.code == 1, ran.out + ran.err
    tail = ran.err.split("pivotbuild: last lines of extra:\n")[1].splitlines()
    assert tail[:3] == ["    Traceback (most recent call last):", tail[1], "        import pivot_extra_pkg"], tail
    assert tail[1].endswith(f'/steps.py", line {STEPS.lstrip().splitlines().index("def extra(ctx):") + 2}, in extra')
    assert "ModuleNotFoundError: No module named 'pivot_extra_pkg'" in ran.err, ran.err
    host = os.uname().nodename
    assert f"pivotbuild: on the Dask worker {host}: install the packages the stage imports there" in ran.err
    assert not (project.root / "e.txt").exists()
    ran = project.run("--executor", "local")  # here it is installed
    assert ran.code == 0, ran.out + ran.err
    assert (project.root / "e.txt").read_text() == "from the package"


def test_an_incremental_output_accumulates_over_builds_on_the_cluster(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _with_remote(project, tmp_path)
    project.write("src.txt", "first\n")
    project.pivotfile(
        """
        stage grow:
            deps: src.txt
            outs: log.txt (incremental) where.txt
            run: cat $< >> log.txt; pwd > where.txt
        """
    )
    assert project.run("--executor", cluster.address).code == 0
    assert (project.root / "log.txt").read_text() == "first\n"
    project.write("log.txt", "a stray edit\n")  # (the stage builds on its recorded version, not on this)
    project.write("src.txt", "second\n")
    ran = project.run("--executor", cluster.address)
    assert ran.code == 0, ran.out + ran.err
    assert (project.root / "log.txt").read_text() == "first\nsecond\n"
    assert _ran_on_a_worker(cluster, (project.root / "where.txt").read_text().strip())
    assert project.run("-q").code == 0


def test_a_persist_output_is_kept_for_the_stage_on_the_cluster(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _with_remote(project, tmp_path)
    project.write("src.txt", "first\n")
    project.pivotfile(
        """
        stage keep:
            deps: src.txt
            outs: seen/ (persist) where.txt
            run: n=$$(ls seen | wc -l); cp $< seen/$$n.txt; pwd > where.txt
        """
    )
    assert project.run("--executor", cluster.address).code == 0
    project.write("src.txt", "second\n")
    ran = project.run("--executor", cluster.address)
    assert ran.code == 0, ran.out + ran.err
    seen = project.root / "seen"
    assert sorted(p.name for p in seen.iterdir()) == ["0.txt", "1.txt"]
    assert (seen / "0.txt").read_text() == "first\n" and (seen / "1.txt").read_text() == "second\n"
    assert _ran_on_a_worker(cluster, (project.root / "where.txt").read_text().strip())
    assert project.run("-q").code == 0


def test_a_stage_on_a_worker_shows_its_lines_as_it_prints_them_and_each_once(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _with_remote(project, tmp_path)
    go = tmp_path / "go"  # (the test makes it once it has seen the first line: the stage waits for it)
    talk = project.write(
        "talk.sh",
        'echo first\nfor i in $(seq 100); do [ -e "$GO" ] && break; sleep 0.1; done\n'
        '[ -e "$GO" ] && echo "went on"\nseq 3000 | sed "s/^/n /"\n',
    )
    talk.chmod(0o755)
    project.pivotfile(
        f"""
        stage talk:
            deps: talk.sh
            outs: talk.txt
            env: GO={go}
            run: ./talk.sh && echo > $@
        """
    )
    build = _on_cluster(project, cluster)
    assert build.stdout is not None
    seen = []
    for line in build.stdout:
        seen.append(line)
        if "first" in line:
            go.touch()  # the line came while the stage was still running
            break
    rest, err = build.communicate(timeout=120)
    out = "".join(seen) + rest
    assert build.returncode == 0, out + err
    assert "went on" in out
    numbered = [line for line in out.splitlines() if " n " in f" {line}"]
    assert len(numbered) == 3000  # every line once: those the events brought and none again from the result


def test_the_scheduler_forgets_a_builds_lines_once_its_client_has_gone(project: Project, tmp_path: Path) -> None:
    from distributed import Client

    # (Dask's delay cut from an hour to a second, for the test)
    own = Cluster(tmp_path / "cluster", env={"DASK_DISTRIBUTED__SCHEDULER__EVENTS_CLEANUP_DELAY": "1s"})
    try:
        own.add_worker()
        own.wait_for_workers(1)
        _with_remote(project, tmp_path)
        project.pivotfile("stage talk:\n    outs: talk.txt\n    run: seq 50; echo > $@\n")
        ran = project.run("--executor", own.address)
        assert ran.code == 0, ran.err
        assert "talk | 50" in ran.out

        def lines_kept() -> int:
            with Client(own.tcp, timeout=30, set_as_default=False) as client:
                events = client.get_events()
            return sum(
                1
                for kept in events.values()
                for _, msg in kept
                if isinstance(msg, (list, tuple)) and msg and str(msg[0]).startswith("pivot-talk")
            )

        deadline = time.monotonic() + 30
        while lines_kept() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert lines_kept() == 0
    finally:
        own.stop()
