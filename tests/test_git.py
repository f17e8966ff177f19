"""Lockfiles in git: `pivotbuild init` sets up the diff and merge drivers
(cli/gitsetup.py), `git diff` shows `lock show` text, `git merge` merges
lockfiles with `lock merge`, and `pivotbuild checkout` after `git checkout`
replaces outputs whose content is in the cache.  Real git, in a repository
whose config is its own (the user's global and system config are not read)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project

from pivotbuild.cli.gitsetup import ATTRIBUTES


@pytest.fixture
def isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """git reads no global or system config; git finds this `pivotbuild` on the PATH."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def ok(cwd: Path, *args: str) -> str:
    done = git(cwd, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


@pytest.fixture
def repo(project: Project, isolated_git: None) -> Project:
    ok(project.root, "init", "-q", "-b", "main")
    ok(project.root, "config", "user.name", "Test")
    ok(project.root, "config", "user.email", "test@example.com")
    return project


def test_init_sets_up_the_drivers_once_and_keeps_other_attributes(repo: Project) -> None:
    repo.write(".gitattributes", "*.png binary")  # no final newline
    r = repo.run("init")
    assert r.code == 0, r.err
    assert "pivotbuild: git: added" in r.err
    assert (repo.root / ".gitattributes").read_text() == f"*.png binary\n{ATTRIBUTES}\n"
    assert ok(repo.root, "config", "--local", "diff.pivotlock.textconv").strip() == "pivotbuild lock show"
    assert ok(repo.root, "config", "--local", "merge.pivotlock.driver").strip() == "pivotbuild lock merge %O %A %B"
    assert ok(repo.root, "config", "--local", "merge.pivotlock.name").strip()
    again = repo.run("init")
    assert again.code == 0
    assert "git:" not in again.err
    assert (repo.root / ".gitattributes").read_text() == f"*.png binary\n{ATTRIBUTES}\n"


def test_init_no_git_and_init_outside_a_repository_leave_git_alone(repo: Project, tmp_path: Path) -> None:
    r = repo.run("init", "--no-git")
    assert r.code == 0, r.err
    assert not (repo.root / ".gitattributes").exists()
    assert git(repo.root, "config", "--local", "diff.pivotlock.textconv").returncode == 1
    outside = tmp_path / "plain"
    outside.mkdir()
    r = repo.run("init", cwd=outside)
    assert r.code == 0, r.err
    assert (outside / ".pivot").is_dir()
    assert not (outside / ".gitattributes").exists()
    assert "git:" not in r.err


PIPELINE = """
stage a:
    deps: a.in a2.in
    outs: a.out
    run: cat $^ > $@ && echo a >> runs.log
stage b:
    deps: b.in
    outs: b.out
    run: cat $< > $@ && echo b >> runs.log
"""


def runs(project: Project) -> list[str]:
    return (project.root / "runs.log").read_text().split()


def build_and_commit(project: Project, message: str) -> None:
    r = project.run()
    assert r.code == 0, r.err
    ok(project.root, "add", "-A")
    ok(project.root, "commit", "-q", "-m", message)


@pytest.fixture
def shared(repo: Project) -> Project:
    """The pipeline built and committed on main, with the drivers set up."""
    assert repo.run("init").code == 0
    repo.write(".gitignore", "*.out\nruns.log\n.pivot/\n")
    repo.pivotfile(PIPELINE)
    for name in ("a.in", "a2.in", "b.in"):
        repo.write(name, f"{name} v1\n")
    build_and_commit(repo, "base")
    return repo


def branch_changing(project: Project, branch: str, file: str, text: str) -> None:
    ok(project.root, "checkout", "-q", "-b", branch, "main")
    project.write(file, text)
    build_and_commit(project, f"change {file}")


def test_git_diff_of_the_lockfile_shows_lock_show_text(shared: Project) -> None:
    before = shared.run("lock", "show").out
    branch_changing(shared, "x", "a.in", "a.in v2\n")
    diff = ok(shared.root, "diff", "main", "--", "Pivotfile.lock")
    assert "Binary files" not in diff
    old = next(line for line in before.splitlines() if line.startswith("  out a.out"))
    new = next(line for line in shared.run("lock", "show").out.splitlines() if line.startswith("  out a.out"))
    assert f"-{old}" in diff.splitlines()
    assert f"+{new}" in diff.splitlines()
    assert "stage a" in diff
    assert not any(line.startswith(("-", "+")) and "b.out" in line for line in diff.splitlines())


def test_merging_branches_that_rebuilt_different_stages_keeps_both_records(shared: Project) -> None:
    branch_changing(shared, "x", "a.in", "a.in v2\n")
    branch_changing(shared, "y", "b.in", "b.in v2\n")
    ok(shared.root, "checkout", "-q", "x")
    ok(shared.root, "merge", "-q", "--no-edit", "y")
    assert "<<<<<<<" not in (shared.root / "Pivotfile.lock").read_text(errors="replace")
    # The workspace's a.out is y's (outputs are not in git); checkout puts
    # x's back from the cache without --force, and nothing needs to run.
    before = runs(shared)
    r = shared.run("checkout")
    assert r.code == 0, r.err
    assert (shared.root / "a.out").read_text() == "a.in v2\na2.in v1\n"
    assert (shared.root / "b.out").read_text() == "b.in v2\n"
    assert shared.run("-q").code == 0
    assert shared.run().code == 0
    assert runs(shared) == before


def test_a_stage_rebuilt_differently_on_both_branches_is_dropped_and_reruns(shared: Project) -> None:
    branch_changing(shared, "x", "a.in", "a.in v2\n")
    branch_changing(shared, "y", "a2.in", "a2.in v2\n")
    ok(shared.root, "checkout", "-q", "x")
    merged = git(shared.root, "merge", "--no-edit", "y")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "stage a changed on both sides" in merged.stdout + merged.stderr
    shown = shared.run("lock", "show").out
    assert "stage b" in shown
    assert "stage a" not in shown
    before = runs(shared)
    assert shared.run().code == 0
    assert runs(shared) == [*before, "a"]
    assert (shared.root / "a.out").read_text() == "a.in v2\na2.in v2\n"


def test_checkout_after_git_checkout_replaces_outputs_without_force(shared: Project) -> None:
    branch_changing(shared, "x", "a.in", "a.in v2\n")
    ok(shared.root, "checkout", "-q", "main")
    r = shared.run("checkout")
    assert r.code == 0, r.err
    assert r.out.split() == ["restored", "a.out"]
    assert (shared.root / "a.out").read_text() == "a.in v1\na2.in v1\n"
    assert shared.run("verify").code == 0
