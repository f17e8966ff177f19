"""The launcher (bin/launcher.c), end to end: the installed `pivotbuild`
where a C compiler was at hand.  It hands a plain build to the build server
itself, without starting Python, once the Python program has told it the
facts only Python knows; otherwise it runs the Python program
(`pivotbuild-python` beside it), which does everything as before.

Each test that must tell the two paths apart runs a copy of the installed
launcher beside a `pivotbuild-python` of its own: a shell script that notes
each time it runs, then runs the real Python program.  A stage writes
`$PPID`: the server's pid where the server built.
"""

# ruff: noqa: F811  (`servers`, test_server.py's fixture, is imported, then named by the tests that use it)
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from conftest import PIVOTBUILD, Project, Result
from test_server import PPID_STAGE, await_server, parent, servers  # noqa: F401 (servers: a fixture)

ELF = b"\x7fELF"


def _installed() -> Path:
    return Path(PIVOTBUILD[0])


def _compiler() -> str | None:
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler)


def _is_launcher(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ELF


def test_the_installed_pivotbuild_is_the_launcher_where_a_compiler_was_at_hand() -> None:
    program = _installed()
    if len(PIVOTBUILD) != 1 or _compiler() is None or os.environ.get("PIVOTBUILD_NO_LAUNCHER") == "1":
        assert len(PIVOTBUILD) != 1 or not _is_launcher(program)  # the Python program itself
        return
    assert _is_launcher(program), f"{program} is not the launcher: reinstall (pip install -e .)"
    script = program.with_name("pivotbuild-python")
    assert script.read_text().startswith("#!")  # the Python program, beside it


@pytest.fixture
def launcher(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the installed launcher, and the file its `pivotbuild-python`
    (a script that runs the real one) appends a line to each time it runs."""
    installed = _installed()
    if len(PIVOTBUILD) != 1 or not _is_launcher(installed):
        pytest.fail("pivotbuild is not the launcher here: see the test above")
    real = installed.with_name("pivotbuild-python")
    python = real.read_text().splitlines()[0][2:].strip()
    where = tmp_path / "bin"
    where.mkdir()
    copy = where / "pivotbuild"
    shutil.copy2(installed, copy)
    ran = tmp_path / "python-ran"
    wrapper = where / "pivotbuild-python"
    wrapper.write_text(f'#!/bin/sh\necho "$PIVOT_LAUNCHER" >> "{ran}"\nexec "{python}" "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return copy, ran


def _run(program: Path, p: Project, *args: str, env: dict[str, str] | None = None) -> Result:
    proc = subprocess.run(
        [str(program), *args],
        cwd=p.root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _times(ran: Path) -> int:
    return len(ran.read_text().splitlines()) if ran.exists() else 0


def _first(program: Path, p: Project, servers: Path) -> int:
    """The first build through the launcher `program` (the Python program's:
    it builds, starts a server and tells the launcher), then the server's pid."""
    p.pivotfile(PPID_STAGE)
    p.write("in.txt", "one\n")
    first = _run(program, p)
    assert first.code == 0, first.err
    return await_server(servers)


def test_once_told_the_launcher_reaches_the_server_without_starting_python(
    project: Project, servers: Path, launcher: tuple[Path, Path]
) -> None:
    program, ran = launcher
    pid = _first(program, project, servers)
    assert ran.read_text().splitlines() == [str(program)]  # the Python program, told which launcher ran it
    assert list(servers.glob("*.launch"))  # what it told the launcher
    project.write("in.txt", "two\n")
    r = _run(program, project)
    assert r.code == 0, r.err
    assert "1 ran, 0 up to date" in r.out + r.err
    assert parent(project) == pid  # the server built it
    assert _times(ran) == 1  # and no Python started for it
    again = _run(program, project)
    assert again.code == 0 and "0 ran, 1 up to date" in again.out + again.err
    assert _times(ran) == 1
    # A failing stage: its status and its message come back through the launcher.
    project.pivotfile(PPID_STAGE + "\nstage bad:\n    outs: bad.txt\n    run: echo broken >&2; exit 3\n")
    failed = _run(program, project)
    assert failed.code == 1 and "broken" in failed.err, failed
    assert _times(ran) == 1
    assert _run(program, project, "-q", "who").code == 0  # -q: up to date
    assert _times(ran) == 1


def test_what_the_launcher_cannot_say_the_python_program_does(
    project: Project, servers: Path, launcher: tuple[Path, Path]
) -> None:
    program, ran = launcher
    pid = _first(program, project, servers)
    project.write("in.txt", "two\n")
    # A subcommand: the server refuses it, and the Python program answers.
    status = _run(program, project, "status")
    assert status.code == 0, status.err
    assert _times(ran) == 2
    # An argument that is not UTF-8: as without a server (no such target).
    odd = _run(program, project, os.fsdecode(b"caf\xe9"))
    assert odd.code == 2 and "caf" in odd.err, odd
    assert _times(ran) == 3
    # A launcher replaced (a reinstall: another stamp) is told again, then served.
    os.utime(program, ns=(1_000_000_000, 1_000_000_000))
    r = _run(program, project)
    assert r.code == 0, r.err
    assert _times(ran) == 4 and parent(project) == pid
    project.write("in.txt", "three\n")
    assert _run(program, project).code == 0
    assert _times(ran) == 4 and parent(project) == pid


def test_without_a_server_the_launcher_runs_the_python_program_and_leaves_no_trace(
    project: Project, launcher: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIVOT_SERVER", "0")
    program, ran = launcher
    project.pivotfile(
        "stage env:\n    deps: in.txt\n    outs: env.txt\n"
        "    run: cat in.txt > env.txt; env | grep PIVOT_ >> env.txt || true\n"
    )
    project.write("in.txt", "one\n")
    r = _run(program, project)
    assert r.code == 0, r.err
    assert _times(ran) == 1
    seen = (project.root / "env.txt").read_text()
    assert "PIVOT_STAGE=env\n" in seen and "PIVOT_LAUNCHER" not in seen  # taken out before the build
    assert _run(program, project, "--version").out.startswith("pivotbuild ")
    broken = _run(program, project, "--no-such-flag")
    assert broken.code == 2 and "--no-such-flag" in broken.err
    assert _times(ran) == 3


@pytest.mark.parametrize("case", [(None, True), ("false", True), ("true", False)])
def test_the_launcher_s_default_is_the_python_client_s(
    project: Project,
    servers: Path,
    launcher: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str | None, bool],
) -> None:
    """Without PIVOT_SERVER: on, except in a CI job (client.enabled)."""
    ci, direct = case  # (CI's value, and whether the launcher then reaches the server itself)
    program, ran = launcher
    monkeypatch.delenv("PIVOT_SERVER")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    project.pivotfile(PPID_STAGE)
    project.write("in.txt", "one\n")
    assert _run(program, project).code == 0
    if direct:
        pid = await_server(servers)
    project.write("in.txt", "two\n")
    assert _run(program, project).code == 0
    if direct:
        assert _times(ran) == 1 and parent(project) == pid
    else:
        assert _times(ran) == 2 and not servers.exists()


@pytest.mark.parametrize("lang", ["C", "xx_XX.UTF-8", None])
def test_the_launcher_reaches_the_server_where_python_coerces_the_c_locale(
    project: Project, servers: Path, launcher: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, lang: str | None
) -> None:
    """Python sets LC_CTYPE=C.UTF-8 in its own environment where the locale
    is C: LANG=C, no locale variable at all, or one that is not installed
    (PEP 538).  The launcher must see the environment as Python will, or it
    never finds the server (only slower, never wrong: the server compares)."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        monkeypatch.delenv(name, raising=False)
    if lang is not None:
        monkeypatch.setenv("LANG", lang)
    program, ran = launcher
    pid = _first(program, project, servers)
    project.write("in.txt", "two\n")
    assert _run(program, project).code == 0
    assert _times(ran) == 1 and parent(project) == pid
