"""Helpers shared by the end-to-end tests of the compiled plan and the fast
path: run the real `pivotbuild` under `python -X importtime`, which tells,
without timing anything, whether the no-op fast path answered (it imports
neither the engine nor anything in HEAVY: lark, networkx, click, rich, and
the typing machinery), whether a build
ran without click, and whether the Pivotfiles were parsed."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import Project

# What the no-op fast path never imports: the command line and the compiler, the
# typing machinery (cattrs and attrs, typing, dataclasses) the state's readers there
# avoid, and pathlib, re and json (10 ms of a 30 ms no-op: it works in strings).
HEAVY = frozenset(
    {"lark", "networkx", "click", "rich", "attr", "attrs", "cattrs", "typing", "dataclasses", "pathlib", "re", "json"}
)


@dataclass(frozen=True)
class Traced:
    """One `python -X importtime -m pivotbuild` run."""

    code: int
    out: str
    err: str  # stderr without the import-time lines
    imported: frozenset[str]  # top-level packages imported
    modules: frozenset[str] = frozenset()  # every module imported, by its full name

    @property
    def fast(self) -> bool:
        """The no-op fast path answered: nothing was decided by the engine."""
        return not self.imported & HEAVY and "pivotbuild.build.engine" not in self.modules

    @property
    def decided(self) -> bool:
        """The engine ran (whether or not click parsed the command line)."""
        return "pivotbuild.build.engine" in self.modules

    @property
    def parsed(self) -> bool:
        return "pivotbuild.pivotfile.parser" in self.modules


def traced(p: Project, *args: str, cwd: Path | None = None) -> Traced:
    """The real `pivotbuild ARGS`, run by this Python under `-X importtime`."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pivotbuild", *args],
        cwd=cwd or p.root,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    kept: list[str] = []
    modules: set[str] = set()
    for line in proc.stderr.splitlines(keepends=True):
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
        else:
            kept.append(line)
    assert modules, "no -X importtime lines: the test cannot tell which path ran"
    imported = frozenset(m.split(".")[0] for m in modules)
    return Traced(proc.returncode, proc.stdout, "".join(kept), imported, frozenset(modules))


def build(p: Project, *args: str, cwd: Path | None = None) -> Traced:
    """An ordinary-looking build (whichever path answers); it must succeed."""
    r = traced(p, *args, cwd=cwd)
    assert r.code == 0, r
    assert "Traceback" not in r.err, r.err
    return r


def assert_fast(r: Traced) -> None:
    assert r.code == 0, r
    assert "Traceback" not in r.err, r.err
    assert r.fast, f"not the no-op fast path: imported {sorted(r.imported & HEAVY)}; stderr: {r.err}"
