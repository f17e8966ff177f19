"""The Dask executor (build/executors/dask.py, dasktask.py, choice.py) against
a real local cluster: one scheduler and two workers on loopback, started once
for the module, each worker in a directory of its own (its TMPDIR too, so a
stage that prints `pwd` shows where it ran)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3server
from conftest import PIVOTBUILD, Project
from daskcluster import Cluster, free_port

# A matrix fan-out, a directory output and a join.  Each generated file says
# where its stage ran, what the stage's `env:` and PIVOT_STAGE were, and
# whether a variable of pivotbuild's own environment reached it (it must not).
PIPELINE = """
stage gen:
    matrix: n=1 2 3
    deps: src/${n}.txt tool.sh
    outs: out/${n}.txt
    env: GREETING=hello
    run: { ./tool.sh $<; pwd; echo "$PIVOT_STAGE $GREETING $${PIVOT_LEAK:-unset}"; } > $@

stage tree:
    deps: src/
    outs: tree/
    run: mkdir -p tree/sub && cp src/1.txt tree/one.txt && cp src/2.txt tree/sub/two.txt

stage join:
    deps: out/1.txt out/2.txt out/3.txt tree/
    outs: all.txt
    run: cat out/1.txt out/2.txt out/3.txt tree/one.txt tree/sub/two.txt > $@
"""


def _dask_project(project: Project, remote: Path | None, *remote_add: str) -> Project:
    """The project of PIPELINE with its sources, its default remote the new
    directory `remote` (or what `remote_add` adds)."""
    project.pivotfile(PIPELINE)
    for n in (1, 2, 3):
        project.write(f"src/{n}.txt", f"source {n}\n")
    tool = project.write("tool.sh", '#!/bin/sh\necho "tool read $(cat "$1")"\n')
    tool.chmod(0o755)
    if remote is not None:
        remote.mkdir()
        remote_add = ("shared", str(remote))
    ran = project.run("remote", "add", "--default", *remote_add)
    assert ran.code == 0, ran.err
    return project


def _on_cluster(project: Project, cluster: Cluster) -> subprocess.Popen[str]:
    """`pivotbuild --executor` on `cluster`, in the background, its output on pipes."""
    return subprocess.Popen(
        [*PIVOTBUILD, "--executor", cluster.address],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_built(project: Project, cluster: Cluster) -> None:
    """PIPELINE's outputs are right, and its `gen` stages ran on the workers."""
    for n in (1, 2, 3):
        said, ran_in, env = (project.root / f"out/{n}.txt").read_text().splitlines()
        assert said == f"tool read source {n}"
        assert any(Path(ran_in).is_relative_to(w / "tmp") for w in cluster.workers), ran_in
        assert env == f"gen@{n} hello unset"
        assert not Path(ran_in).exists()  # (its scratch directory is removed)
    assert (project.root / "tree/sub/two.txt").read_text() == "source 2\n"
    joined = (project.root / "all.txt").read_text()
    assert joined.startswith("tool read source 1\n") and joined.endswith("source 1\nsource 2\n")


def test_a_fan_out_and_a_join_build_on_the_cluster_and_are_then_up_to_date_locally(
    project: Project, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dask_project(project, tmp_path / "remote")
    monkeypatch.setenv("PIVOT_LEAK", "leaked")  # pivotbuild's own environment: it must not reach the stages
    ran = project.run("-j", "4", "--executor", cluster.address)
    assert ran.code == 0, ran.out + ran.err
    _check_built(project, cluster)
    assert any((tmp_path / "remote" / "objects").iterdir())  # the files travelled through the remote
    ran = project.run("-q")  # up to date, without the executor
    assert ran.code == 0, ran.out + ran.err


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Server]:
    with s3server.running(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def test_the_files_can_travel_through_an_s3_bucket(
    project: Project, cluster: Cluster, s3: s3server.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers have the keys in their environment (see Cluster); pivotbuild, in its own.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3server.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3server.SECRET_KEY)
    bucket = f"s3://{s3.bucket}/dask-{time.monotonic_ns()}"
    _dask_project(project, None, "team", bucket, "--endpoint-url", s3.endpoint)
    ran = project.run("-j", "4", "--executor", cluster.address)
    assert ran.code == 0, ran.out + ran.err
    _check_built(project, cluster)
    assert project.run("-q").code == 0


def test_a_stage_whose_inputs_came_back_is_restored_from_the_run_cache_not_run_again(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    # The executor chosen in the config this time.
    _dask_project(project, tmp_path / "remote")
    address = cluster.address.replace("dask://", "tcp://")
    with open(project.root / ".pivot/config.toml", "a") as config:
        config.write(f'\n[executor]\nkind = "dask"\naddress = "{address}"\n')
    assert project.run("gen@1").code == 0
    first = (project.root / "out/1.txt").read_text()
    assert any(Path(first.splitlines()[1]).is_relative_to(w) for w in cluster.workers), first  # (ran on the cluster)
    project.write("src/1.txt", "changed\n")
    assert project.run("gen@1").code == 0
    second = (project.root / "out/1.txt").read_text()
    assert second.startswith("tool read changed\n") and second.splitlines()[1] != first.splitlines()[1]
    project.write("src/1.txt", "source 1\n")
    ran = project.run("-v", "gen@1")
    assert ran.code == 0, ran.out + ran.err
    assert (project.root / "out/1.txt").read_text() == first  # the same scratch directory: not run again
    assert "restored" in ran.out + ran.err


def test_a_stage_failing_on_a_worker_fails_the_build_with_its_output_and_exit_status(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    project.pivotfile(
        """
        stage bad:
            deps: src/1.txt
            outs: never.txt
            run: echo "reading $<"; echo "it went wrong" >&2; exit 3
        """
    )
    ran = project.run("--executor", cluster.address)
    assert ran.code == 1
    assert "exit status 3" in ran.out + ran.err
    assert "it went wrong" in ran.out + ran.err and "reading src/1.txt" in ran.out + ran.err
    assert not (project.root / "never.txt").exists()


def test_a_stage_is_retried_on_the_cluster_and_timed_out_there(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    mark = tmp_path / "tried"  # (outside any scratch directory, so the second attempt sees the first's)
    project.pivotfile(
        f"""
        stage flaky:
            outs: flaky.txt
            retry: 1
            env: MARK={mark}
            run: if [ -e "$MARK" ]; then echo second > $@; else touch "$MARK"; echo "first fails" >&2; exit 1; fi

        stage slow:
            outs: slow.txt
            timeout: 1s
            run: sleep 30; echo late > $@
        """
    )
    ran = project.run("-k", "--executor", cluster.address)
    assert ran.code == 1
    assert (project.root / "flaky.txt").read_text() == "second\n"
    assert "retry 1 of 1" in ran.out + ran.err
    assert "timed out after 1s" in ran.out + ran.err
    assert not (project.root / "slow.txt").exists()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # (a zombie has ended)


def test_ctrl_c_cancels_the_stages_running_on_the_cluster_and_exits_130(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    mark = tmp_path / "pid"
    project.pivotfile(
        f"""
        stage slow:
            outs: slow.txt
            env: MARK={mark}
            run: sleep 60 & echo $$! > "$MARK.tmp"; mv "$MARK.tmp" "$MARK"; wait; echo late > $@
        """
    )
    build = _on_cluster(project, cluster)
    deadline = time.monotonic() + 30
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(mark.read_text())
    assert _alive(pid)
    build.send_signal(signal.SIGINT)
    _, err = build.communicate(timeout=30)
    assert build.returncode == 130, err
    while _alive(pid) and time.monotonic() < deadline:  # killed on its worker, not left to run its minute
        time.sleep(0.05)
    assert not _alive(pid)
    assert not (project.root / "slow.txt").exists()


def test_a_stage_whose_worker_is_killed_runs_again_on_another(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    mark = tmp_path / "first"  # the first attempt's worker (the stage's parent) and its sleep
    project.pivotfile(
        f"""
        stage survivor:
            deps: src/1.txt
            outs: survivor.txt
            env: MARK={mark}
            run:
                if [ -e "$MARK" ]; then cat $< > $@; pwd >> $@; exit; fi
                sleep 60 & echo "$PPID $$!" > "$MARK.tmp"; mv "$MARK.tmp" "$MARK"; wait
        """
    )
    build = _on_cluster(project, cluster)
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker, sleep = (int(pid) for pid in mark.read_text().split())
        os.kill(worker, signal.SIGKILL)
        out, err = build.communicate(timeout=60)
        assert build.returncode == 0, out + err
        said, ran_in = (project.root / "survivor.txt").read_text().splitlines()
        assert said == "source 1"
        killed = cluster.homes[worker]
        assert Path(ran_in).is_relative_to(cluster.base) and not Path(ran_in).is_relative_to(killed)
        # The killed worker's stage did not go on running: its watchdog killed it.
        deadline = time.monotonic() + 10
        while _alive(sleep) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(sleep)
    finally:
        build.kill()
        build.wait()
        cluster.add_worker()  # (two again, for the other tests)
        cluster.wait_for_workers(2)


def test_a_scheduler_lost_mid_build_fails_its_stage_saying_so(project: Project, tmp_path: Path) -> None:
    own = Cluster(tmp_path / "cluster")  # (one of its own: this test kills its scheduler)
    try:
        own.add_worker()
        own.wait_for_workers(1)
        _dask_project(project, tmp_path / "remote")
        mark = tmp_path / "started"
        project.pivotfile(f"stage slow:\n    outs: slow.txt\n    run: touch {mark}; sleep 30; echo > $@\n")
        build = _on_cluster(project, own)
        deadline = time.monotonic() + 30
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(own.procs[0].pid, signal.SIGKILL)  # the scheduler
        out, err = build.communicate(timeout=60)
        assert build.returncode == 1, out + err
        assert "the Dask cluster dropped the stage (its scheduler went away?)" in err
        assert "Traceback" not in err and "distributed" not in err  # (Dask's own logging kept quiet)
    finally:
        own.stop()


def test_a_cluster_without_workers_fails_the_stage_saying_so(project: Project, tmp_path: Path) -> None:
    own = Cluster(tmp_path / "cluster")  # (a scheduler alone: a task would wait for a worker for ever)
    try:
        _dask_project(project, tmp_path / "remote")
        project.pivotfile("stage s:\n    outs: s.txt\n    run: echo > $@\n")
        env = {**os.environ, "PIVOT_DASK_WAIT_S": "3"}
        build = subprocess.run(
            [*PIVOTBUILD, "--executor", own.address],
            check=False,
            cwd=project.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert build.returncode == 1, build.stdout + build.stderr
        assert "pivotbuild: the Dask cluster has had no worker for 3s; the stage did not run" in build.stderr
    finally:
        own.stop()


def test_a_stage_reaching_outside_the_project_is_refused(project: Project, cluster: Cluster, tmp_path: Path) -> None:
    _dask_project(project, tmp_path / "remote")
    (project.root.parent / "outside.txt").write_text("out there\n")
    project.pivotfile("stage s:\n    deps: ../outside.txt\n    outs: s.txt\n    run: cat $< > $@\n")
    ran = project.run("--executor", cluster.address)
    assert ran.code == 1, ran
    assert "../outside.txt is outside the project, and the dask executor carries only files" in ran.err, ran.err


def test_a_missing_output_is_named_as_the_local_executor_names_it(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    project.pivotfile("stage s:\n    outs: a.txt b.txt\n    run: echo a > a.txt\n")
    ran = project.run("--executor", cluster.address)
    assert ran.code == 1, ran
    assert "declared output b.txt was not created" in ran.err, ran.err


def test_an_unreachable_scheduler_is_a_one_line_error(project: Project, tmp_path: Path) -> None:
    _dask_project(project, tmp_path / "remote")
    ran = project.run("--executor", f"dask://127.0.0.1:{free_port()}")
    assert ran.code == 2
    assert ran.err.startswith("pivotbuild: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert len(ran.err.strip().splitlines()) == 1, ran.err
    assert not (project.root / "out").exists()


def test_the_dask_executor_needs_a_remote(project: Project) -> None:
    project.pivotfile("stage a:\n    outs: a.txt\n    run: echo a > $@\n")
    ran = project.run("--executor", "dask://127.0.0.1:8786")
    assert ran.code == 2
    assert ran.err.strip() == (
        "pivotbuild: the dask executor needs a remote, for the stages' files to travel through:"
        " pivotbuild remote add --default NAME URL (a directory or object store the workers reach too)"
    )


def test_a_build_that_runs_nothing_on_the_cluster_needs_no_cluster(project: Project, tmp_path: Path) -> None:
    _dask_project(project, tmp_path / "remote")
    assert project.run("--executor", "local").code == 0
    for path in ("out", "tree", "all.txt"):
        shutil.rmtree(project.root / path) if (project.root / path).is_dir() else (project.root / path).unlink()
    nobody = f"dask://127.0.0.1:{free_port()}"  # (nothing listens there)
    restored = project.run("--executor", nobody)  # every stage restored from the cache: no stage starts
    assert restored.code == 0, restored.err
    assert "0 ran, 0 up to date, 5 restored" in restored.err
    again = project.run("--executor", nobody)
    assert again.code == 0 and "5 up to date" in again.err, again.err
    project.write("src/1.txt", "changed\n")  # now gen@1 must run: the cluster is needed, and not there
    needed = project.run("--executor", nobody)
    assert needed.code == 2
    assert needed.err.startswith("pivotbuild: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert len(needed.err.strip().splitlines()) == 1, needed.err
    assert "gen@1" not in needed.out  # (never said to have started)


def test_without_dask_installed_the_error_says_what_to_install(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dask_project(project, tmp_path / "remote")
    hidden = tmp_path / "nodask"
    hidden.mkdir()
    (hidden / "distributed.py").write_text("raise ImportError('No module named distributed')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden))
    ran = project.run("--executor", "dask://127.0.0.1:8786")
    assert ran.code == 2
    assert ran.err.strip() == 'pivotbuild: the dask executor needs Dask: pip install "pivotbuild[dask]"'


def test_an_executor_that_is_neither_local_nor_dask_is_a_usage_error(project: Project) -> None:
    project.pivotfile("stage a:\n    outs: a.txt\n    run: echo a > $@\n")
    ran = project.run("--executor", "ssh://somewhere")
    assert ran.code == 2
    assert "use local, or dask://HOST:PORT" in ran.err
    assert project.run("--executor", "local").code == 0
    assert (project.root / "a.txt").read_text() == "a\n"


def test_a_worker_keeps_no_descriptor_of_the_stages_it_ran(project: Project, cluster: Cluster, tmp_path: Path) -> None:
    _dask_project(project, tmp_path / "remote")
    workers = [proc.pid for proc in cluster.procs if cluster.homes[proc.pid] in cluster.workers and proc.poll() is None]

    def open_fds() -> int:
        return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in workers)

    project.pivotfile(
        "stage s:\n    matrix: n=" + " ".join(map(str, range(40))) + "\n    outs: s/${n}.txt\n    run: echo ${n} > $@\n"
    )
    before = open_fds()
    ran = project.run("-j", "4", "--executor", cluster.address)
    assert ran.code == 0, ran.err
    assert open_fds() - before < 20  # (each task's scratch cache left two: 80 here)


def test_a_stage_reading_its_params_file_itself_finds_it_on_the_worker(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    project.write("params.toml", "[train]\nrate = 3\n")
    project.pivotfile(
        """
        stage fit:
            params: train.rate
            outs: fit.txt
            run: grep rate params.toml > $@
        """
    )
    ran = project.run("--executor", cluster.address)
    assert ran.code == 0, ran.out + ran.err
    assert (project.root / "fit.txt").read_text() == "rate = 3\n"


def test_pivotbuild_run_takes_the_executor_too(project: Project, cluster: Cluster, tmp_path: Path) -> None:
    _dask_project(project, tmp_path / "remote")
    ran = project.run("run", "gen@2", "--executor", cluster.address)
    assert ran.code == 0, ran.out + ran.err
    ran_in = (project.root / "out/2.txt").read_text().splitlines()[1]
    assert any(Path(ran_in).is_relative_to(w / "tmp") for w in cluster.workers), ran_in
    assert not (project.root / "out/1.txt").exists()  # (exactly the stage named)
