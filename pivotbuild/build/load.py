"""The project and its graph, from the compiled plan when it is fresh, else
compiled afresh (and the plan written): what every command that builds or
names stages loads first.  (Apart from project.py, which only compiles, so
that the plan, which restores projects, and the project do not import each
other.)"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

from pivotbuild import paths
from pivotbuild.project import LoadOptions, Project, load_project, main_file_of
from pivotbuild.structs import replace

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from pivotbuild.graph import BuildGraph
    from pivotbuild.state import plan


def load_compiled(options: LoadOptions, warn: Callable[[str], None]) -> tuple[Project, BuildGraph]:
    """The project and its validated graph: restored from the compiled plan when
    that is still fresh, else compiled and validated (and the plan written).
    A damaged plan is reported through `warn` and replaced."""
    from pivotbuild.build.selection import open_graph
    from pivotbuild.state import plan

    main_file = None if options.all_pipelines else main_file_of(options)
    loaded = _fresh_plan(main_file, options.overrides, warn)
    if loaded is not None:
        restored = plan.restore(loaded, options.cwd)
        if restored is not None:
            return restored
    project = load_project(options)
    graph = open_graph(project)
    if main_file is not None:
        project = replace(project, plan_id=plan.save(project, graph, main_file, options.overrides))
    return project, graph


def stage_names(options: LoadOptions) -> tuple[str, list[tuple[str, str, str, bool]]]:
    """The pipeline whose stages are named without a prefix, and each stage's
    (pipeline, name, base, has a matrix): what a command line can name them by
    (for shell completion).  Read from the compiled plan when it is fresh (no
    parsing), else compiled; unlike load_compiled this writes nothing, not even
    the plan.  Raises as load_project does."""
    from pivotbuild.state import plan

    main_file = None if options.all_pipelines else main_file_of(options)
    loaded = _fresh_plan(main_file, options.overrides)
    if loaded is not None:
        try:
            listed = [(p, name, base, matrix) for p, name, base, matrix, _ in loaded.index.stages]
        except plan.Damaged:
            pass  # compiled again below
        else:
            return loaded.index.current, listed
    project = load_project(options)
    return project.current_dir, [(s.id.pipeline, s.id.name, s.base, bool(s.matrix)) for s in project.stages]


def _fresh_plan(
    main_file: Path | None, overrides: Mapping[str, str], warn: Callable[[str], None] | None = None
) -> plan.Loaded | None:
    """The compiled plan of `main_file` with these variables, if it is still
    fresh.  A damaged plan is reported through `warn` (if given) and ignored."""
    from pivotbuild.state import plan

    if main_file is None:
        return None
    try:
        loaded = plan.read(main_file, overrides)
    except plan.Damaged as exc:
        if warn is not None:
            shown = plan.plan_path(main_file.parent)
            with contextlib.suppress(ValueError):
                shown = shown.relative_to(paths.find_root(main_file.parent))
            warn(f"{shown.as_posix()}: {exc}; compiling the Pivotfiles again")
        return None
    return loaded if loaded is not None and plan.fresh(loaded, main_file) else None
