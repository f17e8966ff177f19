"""Outputs restored from the cache (checkout, a restore before a stage would
run, the run cache, pull) get the permissions a fresh run gives them: the
umask's, and the execute bits the stage set."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project, Result

PIPELINE = """
X = 1
stage tool:
    outs: tool.sh
    run: printf '#!/bin/sh\\necho ${X}\\n' > $@ && chmod +x $@
stage notes:
    outs: notes.txt
    run: echo note ${X} > $@
stage tree:
    outs: tree/
    run:
        mkdir -p $@/sub/deeper
        echo a ${X} > $@/a.txt
        printf '#!/bin/sh\\n' > $@/sub/run.sh
        chmod +x $@/sub/run.sh
        echo d > $@/sub/deeper/d.txt
"""
OUTS = ("tool.sh", "notes.txt", "tree")


def run(project: Project, umask: int, *args: str) -> Result:
    """The real `pivotbuild`, started with `umask`."""
    proc = subprocess.run(
        [*PIVOTBUILD, *args],
        cwd=project.root,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
        umask=umask,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def modes(root: Path) -> dict[str, str]:
    """The permission bits of every output path (directories included)."""
    found = {}
    for out in OUTS:
        for path in [root / out, *sorted((root / out).rglob("*"))]:
            found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def remove_outputs(root: Path) -> None:
    for out in OUTS:
        path = root / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def test_checkout_and_restores_give_outputs_the_modes_of_a_fresh_run(project: Project, umask: int) -> None:
    project.pivotfile(PIPELINE)
    run(project, umask)
    fresh = modes(project.root)
    assert fresh["tree"] == oct(0o777 & ~umask)  # what the stage's mkdir made
    assert fresh["tool.sh"] == oct(0o777 & ~umask)  # chmod +x honours the umask
    shown = run(project, umask, "lock", "show").out
    assert " exec" in next(line for line in shown.splitlines() if "out tool.sh" in line)  # the record says so
    assert " exec" not in next(line for line in shown.splitlines() if "out notes.txt" in line)

    remove_outputs(project.root)
    run(project, umask, "checkout")
    assert modes(project.root) == fresh

    remove_outputs(project.root)
    run(project, umask)  # restored: the lockfile still matches everything but the outputs
    assert modes(project.root) == fresh

    run(project, umask, "X=2")
    run(project, umask)  # X back to 1: restored from the run cache
    assert modes(project.root) == fresh
    assert (project.root / "notes.txt").read_text() == "note 1\n"


def test_pull_gives_outputs_the_modes_of_a_fresh_run(tmp_path: Path, umask: int) -> None:
    share = tmp_path / "share"
    share.mkdir()
    one = Project(tmp_path / "one")
    (one.root / ".pivot").mkdir(parents=True)
    one.pivotfile(PIPELINE)
    run(one, umask)
    fresh = modes(one.root)
    run(one, umask, "remote", "add", "--default", "team", str(share))
    run(one, umask, "push")
    two = Project(tmp_path / "two")
    (two.root / ".pivot").mkdir(parents=True)
    for rel in ("Pivotfile", "Pivotfile.lock", ".pivot/config.toml"):
        shutil.copy(one.root / rel, two.root / rel)
    run(two, umask, "pull")
    assert modes(two.root) == fresh


@pytest.mark.parametrize("mode", ["hardlink", "symlink"])
def test_link_modes_keep_restored_outputs_read_only(project: Project, mode: str) -> None:
    project.pivotfile(PIPELINE)
    run(project, 0o022)
    project.write(".pivot/config.toml", f'[core]\ncheckout = "{mode}"\n')
    remove_outputs(project.root)
    run(project, 0o022, "checkout")
    got = modes(project.root)
    assert got["tree"] == got["tree/sub"] == "0o755"  # directories are the workspace's own
    assert got["tree/sub/run.sh"] == got["tool.sh"] == "0o555"  # executables: read-only copies
    assert got["tree/a.txt"] == "0o444"  # the cache's object
    assert (project.root / "tool.sh").stat().st_nlink == 1
    assert os.access(project.root / "tool.sh", os.X_OK)
