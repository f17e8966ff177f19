"""`--no-checkout` with the Dask executor (build/elsewhere.py): the results are
recorded and the remote filled, the workspace left alone; `pivotbuild pull`
then brings the outputs, after which everything is up to date.  Against a real
local cluster (the `cluster` fixture, daskcluster.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import Project
from daskcluster import Cluster
from test_dask_executor import _check_built, _dask_project


def test_no_checkout_fills_the_remote_and_leaves_the_workspace_alone_until_pull(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    ran = project.run("-j", "4", "--executor", cluster.address, "--no-checkout")
    assert ran.code == 0, ran.out + ran.err
    assert "5 outputs were left on the remote (--no-checkout): 'pivotbuild pull' brings them here" in ran.err
    # join read the gen and tree outputs through the remote: none of them is here
    for path in ("out", "tree", "all.txt"):  # (not even out/, the directory of out/1.txt)
        assert not (project.root / path).exists(), path
    assert project.run("-q").code == 1  # not up to date here: the outputs are missing
    pulled = project.run("pull")
    assert pulled.code == 0, pulled.out + pulled.err
    _check_built(project, cluster)  # what the cluster made, join's too, as recorded
    again = project.run("-q")
    assert again.code == 0, again.out + again.err
    built = project.run()  # nothing runs: the records hold for the pulled files
    assert built.code == 0 and "0 ran" in built.err, built.err


def test_outputs_read_inside_a_directory_or_by_a_glob_are_checked_out(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    project.pivotfile(
        """
stage tree:
    outs: tree/
    run: mkdir -p tree && echo one > tree/one.txt

stage parts:
    matrix: n=1 2
    outs: parts/${n}.txt
    run: echo part ${n} > $@

stage one:
    deps: tree/one.txt
    outs: one.txt
    run: cp tree/one.txt $@

stage all:
    deps: parts/*.txt
    outs: all.txt
    run: cat parts/*.txt > $@

stage solo:
    outs: solo.txt
    run: echo solo > $@
"""
    )
    ran = project.run("-j", "4", "--executor", cluster.address, "--no-checkout")
    assert ran.code == 0, ran.out + ran.err
    # Read from inside the directory, or through a glob: the build needed them here.
    assert (project.root / "tree/one.txt").read_text() == "one\n"
    assert (project.root / "parts/2.txt").read_text() == "part 2\n"
    # Read by nobody: left on the remote.
    for path in ("one.txt", "all.txt", "solo.txt"):
        assert not (project.root / path).exists(), path
    assert project.run("pull").code == 0
    assert (project.root / "all.txt").read_text() == "part 1\npart 2\n"
    assert (project.root / "one.txt").read_text() == "one\n"


def test_no_checkout_needs_the_dask_executor(project: Project) -> None:
    project.pivotfile("stage s:\n    outs: s.txt\n    run: echo > $@\n")
    ran = project.run("--no-checkout")
    assert ran.code == 2
    assert ran.err.strip().startswith("pivotbuild: --no-checkout leaves the outputs on the remote")
    assert "--executor dask://HOST:PORT" in ran.err and "Traceback" not in ran.err
    assert not (project.root / "s.txt").exists()
    watched = project.run("-w", "--no-checkout")
    assert watched.code == 2 and "--no-checkout" in watched.err


def test_a_later_no_checkout_build_finds_the_outputs_on_the_remote_instead_of_running_them(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    first = project.run("-j", "4", "--executor", cluster.address, "--no-checkout")
    assert first.code == 0, first.out + first.err
    shutil.rmtree(project.root / ".pivot/cache")  # (as a fresh CI clone has none)
    again = project.run("-j", "4", "--executor", cluster.address, "--no-checkout")
    assert again.code == 0, again.out + again.err
    assert "0 ran, 0 up to date, 5 restored, 0 failed" in again.err
    project.write("src/1.txt", "source one, edited\n")
    edited = project.run("-j", "4", "--executor", cluster.address, "--no-checkout", "--json")
    assert edited.code == 0, edited.err
    done = {e["stage"]: e["status"] for e in map(json.loads, edited.out.splitlines()) if e["event"] == "stage_finished"}
    assert done == {"gen@1": "ran", "gen@2": "restored", "gen@3": "restored", "tree": "ran", "join": "ran"}
    assert not (project.root / "out/2.txt").exists()  # (restored there, not here)
    assert project.run("pull").code == 0
    assert (project.root / "out/1.txt").read_text().startswith("tool read source one, edited\n")
    joined = (project.root / "all.txt").read_text()
    assert joined.startswith("tool read source one, edited\n") and "tool read source 2\n" in joined
    assert project.run("-q").code == 0


def test_push_after_no_checkout_finds_what_the_workers_stored(
    project: Project, cluster: Cluster, tmp_path: Path
) -> None:
    _dask_project(project, tmp_path / "remote")
    ran = project.run("-j", "4", "--executor", cluster.address, "--no-checkout")
    assert ran.code == 0, ran.out + ran.err
    assert not (project.root / "tree").exists()  # (a directory output, left on the remote)
    pushed = project.run("push")  # (a CI job's next step: nothing to send, nothing missing)
    assert pushed.code == 0, pushed.out + pushed.err
    assert "not in the local cache" not in pushed.out + pushed.err
