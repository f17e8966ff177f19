"""Shared fixtures: temporary projects and the real `pivotbuild` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import daskcluster
import pytest

from pivotbuild import structs
from pivotbuild.errors import PivotfileError
from pivotbuild.model import Pipeline
from pivotbuild.pivotfile import compiler
from pivotbuild.pivotfile.compiler import CompileOptions, compile_module
from pivotbuild.pivotfile.parser import parse


def _pivotbuild_command() -> list[str]:
    """The installed console script beside this Python, else `python -m pivotbuild`."""
    script = Path(sys.executable).with_name("pivotbuild")
    if script.exists():
        return [str(script)]
    found = shutil.which("pivotbuild")
    return [found] if found else [sys.executable, "-m", "pivotbuild"]


PIVOTBUILD = _pivotbuild_command()
# Builds run in the tests' own `pivotbuild` processes, whatever the shell that
# started pytest asked for (test_server.py turns build servers on where it tests them).
os.environ["PIVOT_SERVER"] = "0"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass
class Project:
    """A temporary project directory (with `.pivot/`, so it is its own root)."""

    root: Path

    def write(self, rel: str, text: str) -> Path:
        """Write a file (dedented), creating its directories."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def pivotfile(self, text: str, rel: str = "Pivotfile") -> Path:
        return self.write(rel, text)

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 60) -> Result:
        """Run the real `pivotbuild` as a user would, in this project."""
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
        proc = subprocess.run(
            [*PIVOTBUILD, *args],
            cwd=cwd or self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    (root / ".pivot").mkdir(parents=True)
    return Project(root)


@pytest.fixture
def reads_cannot_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process code judges stamps as on a file system whose reads cannot
    wait for a `write` under way (xfs's `lseek` takes no lock): a stamp taken
    within its racy window is proved by the window's rule alone
    (`stamps.read_proves` false; ext4 and tmpfs on Linux 6.13 and later
    prove it at once)."""
    from pivotbuild.state import stamps

    monkeypatch.setattr(stamps, "_SEEK_WAITS", frozenset())  # (a build reads the mount table again)
    monkeypatch.setattr(stamps, "_proving", [frozenset()])


@pytest.fixture
def chain(project: Project) -> Project:
    """A project with the CHAIN pipeline (helpers.py) and its sources, not built yet."""
    from helpers import CHAIN  # helpers imports this module: import it once both exist

    project.pivotfile(CHAIN)
    project.write("in.txt", "hello\n")
    project.write("other.txt", "other\n")
    return project


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[daskcluster.Cluster]:
    """A local Dask cluster, a scheduler and two workers on loopback, for the
    test module that asks for it (daskcluster.py)."""
    t0 = time.monotonic()
    running = daskcluster.Cluster(tmp_path_factory.mktemp("dask"))
    try:
        running.add_worker()
        running.add_worker()
        running.wait_for_workers(2)
        (running.base / "started-in.txt").write_text(f"{time.monotonic() - t0:.2f}s\n")  # (for whoever wonders)
        yield running
    finally:
        running.stop()


def compile_text(text: str, root: Path, subdir: str = "", overrides: dict[str, str] | None = None) -> Pipeline:
    """Parse and compile Pivotfile text (dedented) as if it lived in root/subdir, both
    ways a build may: through the syntax records (`compile_module(parse(...))`) and
    as a project compiles it (`compiler.compile_text`, most stages read without
    their records), checking that the two give the same pipeline or the same errors."""
    pipeline_dir = root / subdir if subdir else root
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(text).lstrip("\n")
    options = CompileOptions(root.resolve(), pipeline_dir.resolve(), overrides or {})
    try:
        general = compile_module(parse(text, "Pivotfile"), options)
    except PivotfileError as exc:
        with pytest.raises(PivotfileError) as refused:
            compiler.compile_text(text, "Pivotfile", options)
        assert refused.value.diagnostics == exc.diagnostics
        raise
    lean = compiler.compile_text(text, "Pivotfile", options)
    # (the params files' stamps, taken by each compile, may differ in whether the racy window had passed)
    assert structs.replace(lean, inputs=general.inputs) == general
    return general
