"""What a build checks before its first stage, and `pivotbuild inspect`
with it: every source the build reads is there (nothing writes it), and
every `py:` stage's function is found in code that parses (read, never
imported)."""

from __future__ import annotations

import os
from pathlib import Path

from pivotbuild.errors import Location, MissingInputs, PyStageError
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId
from pivotbuild.paths import joined
from pivotbuild.project import Project


def check_sources(project: Project, graph: BuildGraph, closure: list[StageId]) -> None:
    """Raise MissingInputs locating every dep of `closure` that nothing writes and that is absent."""
    root = str(project.root)

    def exists(path: str) -> bool:  # (os.path.lexists, without its calls: asked for every source of a first build)
        try:
            os.lstat(joined(root, path))
        except (OSError, ValueError):
            return False
        return True

    problems = graph.missing_inputs(exists, among=closure)
    if problems:
        raise MissingInputs(problems)


def check_runnable(root: Path, graph: BuildGraph, closure: list[StageId]) -> None:
    """Raise PivotfileError locating each `py:` of `closure` whose function
    cannot be found (at its `module:function`), or whose code does not parse
    (at the error, in the Python file): the code is read, never imported."""
    problems = []
    seen: set[tuple[str, str]] = set()
    for sid in closure:
        stage = graph.stages[sid]
        if stage.py is None or (sid.pipeline, stage.py) in seen:
            continue
        seen.add((sid.pipeline, stage.py))  # (once for all the variants of a matrix)
        from pivotbuild.pysource import SourceError, fingerprint  # (`ast`: only for a project with py: stages)

        try:
            fingerprint(stage.py, root / sid.pipeline, root)
        except SourceError as exc:
            message = str(exc)
            if exc.path is not None and exc.line is not None:
                at = Location(os.path.relpath(exc.path), exc.line, exc.col or 1)
                message = message.removeprefix(f"{exc.path}:{exc.line}:{exc.col}: ")  # (the location says it)
            else:
                at = stage.py_loc or stage.loc
            problems.append(graph.located(at, message))
    if problems:
        raise PyStageError(problems)
