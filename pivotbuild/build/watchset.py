"""Which paths a build reads: what a watcher subscribes to, and which of the
changes it sees concern the build.

The paths are absolute strings, as a file watcher (watchfiles) reports them.
Outputs are not in the set unless a stage of the build reads them as deps
(then a hand edit of that intermediate file must retrigger the build); the
watcher ignores the outputs of the stages it is running.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from pivotbuild.globs import glob_regex, glob_static_prefix, may_match_under
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId
from pivotbuild.paths import PIVOTFILE, STATE_DIR
from pivotbuild.project import Project
from pivotbuild.structs import field, struct


@struct(frozen=True, slots=True)
class GlobWatch:
    """A glob dep: the directory it searches and the pattern as the stage wrote it."""

    base: str  # absolute: the glob's directories before its first wildcard
    pattern: str  # root-relative, or absolute
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, path: str, root: str) -> bool:
        """Could a change at `path` change what the glob expands to: a match, or
        a directory that could hold matches (a moved directory is one event;
        a path that is not a file now may have been one)?  Hidden files only
        if the pattern names them, as `globs.expand` does."""
        if os.path.isabs(self.pattern):
            rel = path
        elif _under(path, root):
            rel = path[len(root) + 1 :]
        else:
            return False
        if not rel:
            return False
        if "/." in "/" + rel and "/." not in "/" + self.pattern:
            return False
        if self.regex.fullmatch(rel):
            return True
        return may_match_under(self.pattern, rel) and not os.path.isfile(path)


@struct(frozen=True, slots=True)
class WatchSet:
    """The files a build of some targets reads, and what a change to each means."""

    root: str
    # Every Pivotfile, included pipeline and params file (read, or looked for
    # and absent) of the project: a change there means reloading the project.
    # All of the project's, not only the selected stages': any of them can add a
    # stage that writes what the selection reads, or change `default`.
    sources: frozenset[str]
    # Each dep of the selected stages and their upstream closure: a file, or a
    # directory (a change anywhere under it counts).
    deps: frozenset[str]
    globs: tuple[GlobWatch, ...]
    # The project's Python files the `py:` stages' code reaches (pysource.py):
    # a change there is a change to what they run, like a dep's.
    code: frozenset[str] = frozenset()
    # With --all: the directories under which a new Pivotfile joins the build
    # (hidden directories excluded, as --all skips them).
    pivotfile_trees: tuple[str, ...] = ()
    # The directories holding any of the above, below the root: renaming one
    # is a single event for the directory alone.
    containing: frozenset[str] = frozenset()

    def roots(self) -> tuple[str, ...]:
        """The fewest existing directories to watch recursively to see every
        change that `matches`: each path's directory (or, if that is absent, its
        nearest existing ancestor, where it would be created)."""
        wanted = [os.path.dirname(p) for p in (*self.sources, *self.deps, *self.code)]
        wanted += [g.base for g in self.globs]
        wanted += self.pivotfile_trees
        found: list[str] = []
        for directory in sorted({_existing(d) for d in wanted}):
            if not any(_under(directory, kept) or directory == kept for kept in found):
                found.append(directory)
        return tuple(found)

    def matches(self, path: str) -> bool:
        """Does a change at `path` (absolute) concern the build?  Never for
        pivotbuild's own state (`.pivot/`), which every build writes."""
        path = os.path.normpath(path)
        if STATE_DIR in path.split(os.sep):
            return False
        if self.is_source(path) or path in self.containing:
            return True
        if path in self.code:
            return True
        probe = path
        while True:  # the dep itself, or a dep directory holding it
            if probe in self.deps:
                return True
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        return any(g.matches(path, self.root) for g in self.globs)

    def is_source(self, path: str) -> bool:
        """Does a change at `path` (absolute) call for reloading the project
        (a Pivotfile or params file, or with --all a new Pivotfile)?"""
        path = os.path.normpath(path)
        if path in self.sources:
            return True
        if os.path.basename(path) != PIVOTFILE:
            return False
        for tree in self.pivotfile_trees:
            if _under(path, tree) and not any(part.startswith(".") for part in path[len(tree) + 1 :].split(os.sep)):
                return True
        return False


def watch_set(project: Project, graph: BuildGraph, closure: Iterable[StageId], all_pipelines: bool) -> WatchSet:
    """What a build of `closure` (selected stages with their upstream closure,
    as `graph.upstream` gives) reads, in the project as loaded."""
    root = str(project.root)
    deps: set[str] = set()
    found_globs: dict[str, GlobWatch] = {}
    for sid in closure:
        for dep in graph.stages[sid].deps:
            if not dep.is_glob:
                deps.add(os.path.normpath(os.path.join(root, dep.path)))
            elif dep.path not in found_globs:
                base = os.path.normpath(os.path.join(root, glob_static_prefix(dep.path)))
                found_globs[dep.path] = GlobWatch(base, dep.path, glob_regex(dep.path))
    sources = frozenset(os.path.normpath(s.path) for s in project.sources)
    globs = tuple(found_globs[p] for p in sorted(found_globs))
    code = _code(project, graph, closure)
    containing = {
        parent
        for p in (*sources, *deps, *code, *(g.base for g in globs))
        for parent in _parents(p, root)
        if parent != root
    }
    trees = (root,) if all_pipelines else ()
    return WatchSet(
        root, sources, frozenset(deps), globs, code=code, pivotfile_trees=trees, containing=frozenset(containing)
    )


def _code(project: Project, graph: BuildGraph, closure: Iterable[StageId]) -> frozenset[str]:
    """The project files the `py:` stages of `closure` read their code from
    (none for one whose code cannot be read: the build says why)."""
    files: set[str] = set()
    for sid in closure:
        stage = graph.stages[sid]
        if stage.py is None:
            continue
        from pivotbuild.pysource import SourceError, fingerprint  # (`ast`: only for a project with py: stages)

        try:
            files.update(fingerprint(stage.py, project.root / sid.pipeline, project.root).files)
        except SourceError:
            continue
    return frozenset(os.path.normpath(f) for f in files)


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip(os.sep) + os.sep)


def _parents(path: str, root: str) -> Iterable[str]:
    """The directories holding `path`, up to `root` (none if it is outside)."""
    while _under(path, root):
        path = os.path.dirname(path)
        yield path


def _existing(directory: str) -> str:
    """`directory`, or its nearest ancestor that exists."""
    while not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return directory
