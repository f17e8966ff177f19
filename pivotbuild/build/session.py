"""The project a long-lived engine builds: loaded once, served to every build,
reloaded when a Pivotfile or params file changes, and kept as it was when the
new files do not load, so watch mode, the agent server and the Python API
keep building with the last good graph until the Pivotfiles are fixed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from pivotbuild import paths
from pivotbuild.build.load import load_compiled
from pivotbuild.build.selection import selected
from pivotbuild.errors import Location, PivotfileError, ProjectError
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Stage, StageId
from pivotbuild.project import LoadOptions, Project, all_pivotfiles
from pivotbuild.state.stamps import Source, read_source
from pivotbuild.structs import replace, struct

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from pivotbuild.build.watchset import WatchSet

_NOWHERE = Location("", 0, 0)


@struct(frozen=True, slots=True)
class Reloaded:
    """What `LoadedProject.reload` did.  With `error` set the new files did not
    load (the located errors, for the caller to report as `check` does) and the
    last good project and graph keep serving; with `loaded` a new project and
    graph serve from now on, and the stage lists say how the stages differ."""

    loaded: bool = False
    error: PivotfileError | ProjectError | None = None
    added: tuple[StageId, ...] = ()  # in declaration order
    removed: tuple[StageId, ...] = ()
    redefined: tuple[StageId, ...] = ()  # same id, another definition (moving it in its file is not one)

    @property
    def stages_changed(self) -> bool:
        return bool(self.added or self.removed or self.redefined)


class LoadedProject:
    """One project, as a long-lived engine holds it.  Safe to share between
    threads: `current` always returns a consistent (project, graph) pair."""

    def __init__(
        self,
        options: LoadOptions,
        warn: Callable[[str], None],
        preloaded: tuple[Project, BuildGraph] | None = None,
    ) -> None:
        """`warn` hears about a damaged compiled plan (it is replaced);
        `preloaded` is a project and graph already loaded with these options
        (the fast path's), served instead of loading them again."""
        self.options = options
        self._warn = warn
        self._lock = threading.Lock()
        self._current: tuple[Project, BuildGraph] | None = None
        # What the last load or reload attempt saw, good or not: what `changed`
        # compares with, so Pivotfiles that failed to load are not reloaded
        # again until they change again.
        self._seen: tuple[Source, ...] = ()
        self._pivotfiles: frozenset[str] = frozenset()  # --all: the Pivotfiles found
        if preloaded is not None:
            self._serve(preloaded)

    def current(self) -> tuple[Project, BuildGraph]:
        """The project and its validated graph: loaded on first use (from the
        compiled plan when it is fresh), then the same objects until a reload
        swaps in new ones.  The first load raises as `load_compiled` does (and
        the next call tries again); later ones never raise."""
        with self._lock:
            if self._current is None:
                self._serve(load_compiled(self.options, self._warn))
            assert self._current is not None
            return self._current

    def changed(self) -> bool:
        """Has a Pivotfile, included pipeline or params file changed since the
        last load or reload attempt (by stamp, else by content; with --all, a new
        Pivotfile too)?  Cheap: a `stat` per file when nothing changed (and a
        walk of the tree with --all).  True before the first load."""
        with self._lock:
            return self._changed()

    def reload(self, force: bool = False) -> Reloaded:
        """If anything `changed` (or with `force`: a file it does not know of,
        such as an included pipeline that was missing, may have appeared), load
        the project again and serve the new one; if it does not load, keep
        serving the last good one and return the error.  Before the first
        load, this is the first load (an error raises)."""
        with self._lock:
            if self._current is None:
                self._serve(load_compiled(self.options, self._warn))
                return Reloaded(loaded=True)
            if not force and not self._changed():
                return Reloaded()
            seen, pivotfiles = self._look()  # before compiling: a change made while compiling is seen next time
            try:
                new = load_compiled(self.options, self._warn)
            except (PivotfileError, ProjectError) as exc:  # (graph errors are PivotfileErrors)
                self._seen, self._pivotfiles = seen, pivotfiles
                return Reloaded(error=exc)
            old = self._current[1].stages
            self._serve(new)
            return _difference(old, new[1].stages)

    def reads(self, targets: Sequence[str]) -> WatchSet:
        """The paths a build of `targets` (as on the command line; none: the
        default targets) reads, in the project now served: see `WatchSet`.
        Raises TargetError (or PivotfileError for a bad `default`)."""
        from pivotbuild.build.watchset import watch_set  # here: only a watcher asks, not a build

        project, graph = self.current()
        closure = graph.upstream(selected(project, graph, targets))
        return watch_set(project, graph, closure, self.options.all_pipelines)

    # -- under the lock ----------------------------------------------------------------

    def _serve(self, loaded: tuple[Project, BuildGraph]) -> None:
        project = loaded[0]
        self._current = loaded
        self._seen = project.sources
        self._pivotfiles = frozenset(str(project.root / p.file) for p in project.pipelines)

    def _changed(self) -> bool:
        if self._current is None:
            return True
        if not all(s.unchanged() for s in self._seen):
            return True
        project = self._current[0]
        main_dir = project.main_dir  # a new `.pivot/` above makes another root (as plan.fresh checks)
        if main_dir is not None and paths.find_root(main_dir) != project.root:
            return True
        return self.options.all_pipelines and any(str(p) not in self._pivotfiles for p in all_pivotfiles(project.root))

    def _look(self) -> tuple[tuple[Source, ...], frozenset[str]]:
        """The watched files as they are now (and, with --all, those a
        compile would find): the state to compare with if loading them fails."""
        files = {s.path for s in self._seen}
        found = self._pivotfiles
        if self.options.all_pipelines and self._current is not None:
            found = frozenset(str(p) for p in all_pivotfiles(self._current[0].root))
            files |= found
        return tuple(_look_at(f) for f in sorted(files)), found


def _look_at(path: str) -> Source:
    try:
        return read_source(Path(path))[1]
    except OSError:  # unreadable now: changed, until it reads as it did
        return Source(path, None, False, "")


def _difference(old: dict[StageId, Stage], new: dict[StageId, Stage]) -> Reloaded:
    def definition(stage: Stage) -> Stage:
        return replace(stage, loc=_NOWHERE)

    redefined = tuple(sid for sid, s in new.items() if sid in old and definition(old[sid]) != definition(s))
    return Reloaded(
        loaded=True,
        added=tuple(sid for sid in new if sid not in old),
        removed=tuple(sid for sid in old if sid not in new),
        redefined=redefined,
    )
