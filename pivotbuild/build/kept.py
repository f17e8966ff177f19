"""A build server's seal (cli/server.py, docs/server.md): made for an
engine's build once its client has the answer, kept in memory for the next
build's fast check, and written to the file once the server is idle, for a
build in a process of its own.  Made and written under the project lock,
and only while no other process has written the project's state since the
build closed it (the engine's `_warm` stamps, which `still_warm` checks):
otherwise that process's build seals what it found, and this one leaves
the seal alone.  Neither makes the lock's file: a project removed once its
build answered stays removed (ProjectLock's `create`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pivotbuild.build.recorder import Outcome, Recorder, write_seal
from pivotbuild.graph import BuildGraph
from pivotbuild.paths import STATE_DIR
from pivotbuild.project import Project
from pivotbuild.state.projectlock import Busy, ProjectLock
from pivotbuild.state.seal import Seal
from pivotbuild.state.store import StateStore


class KeptSeal:
    """One engine's: `still_warm(store)` says whether `store` is the state its
    last build closed, untouched since; `root()` is its project's root (None
    before a build); `on_wait` is what a lock that must wait says (never
    called: these locks do not wait)."""

    def __init__(
        self,
        still_warm: Callable[[StateStore], bool],
        root: Callable[[], Path | None],
        on_wait: Callable[[str], None],
    ) -> None:
        self._still_warm = still_warm
        self._root = root
        self._on_wait = on_wait
        self._kept: tuple[str, Seal] | None = None  # (the main pipeline's directory, the seal)
        self._unwritten: tuple[Path, Seal, StateStore] | None = None

    def clear(self) -> None:
        """A build begins: it makes its own."""
        self._kept = self._unwritten = None

    def make(
        self,
        project: Project,
        graph: BuildGraph,
        outcome: Outcome,
        *,
        sealed: Seal | None,
        recorder: Recorder,
        store: StateStore,
    ) -> None:
        """The seal of the build that closed `store` (the seal it began with:
        `sealed`), made and kept, not written."""
        self.clear()
        main_dir = project.main_dir
        if main_dir is None:
            return
        try:
            with ProjectLock(project.root / STATE_DIR, wait=False, on_wait=self._on_wait, create=False):
                if not self._still_warm(store):
                    return
                new = recorder.new_seal(project, graph, outcome, sealed)
                # Again, now the seal is made: the lock keeps other pivotbuilds
                # out, not a person, and the client has had its answer.  A
                # lockfile removed or replaced while the seal hashed it would
                # be sealed as it is now (removed: "" for its hash), and the
                # next no-op would trust that.
                if not self._still_warm(store):
                    return
        except (Busy, OSError):  # another build holds the lock: it seals what it finds
            return
        if new is not None:
            if new.gathered:  # (renewed build after build, with no idle moment to write it)
                new = new.compacted()
            self._kept = (str(main_dir), new)
            self._unwritten = (main_dir, new, store)

    def get(self, main_dir: str, plan_id: str) -> Seal | None:
        """The seal kept, if it is of the pipeline in `main_dir` and this plan;
        whether it still holds (the lockfiles as it recorded them) is the
        caller's to check."""
        kept = self._kept
        if kept is None or kept[0] != main_dir or kept[1].plan_id != plan_id:
            return None
        return kept[1]

    def any(self) -> Seal | None:
        """The seal kept, whatever its pipeline."""
        return self._kept[1] if self._kept is not None else None

    def write(self) -> None:
        """The seal kept written to its file, if no build has come since it
        was made (a build server calls this when idle, and as it ends)."""
        unwritten, self._unwritten = self._unwritten, None
        root = self._root()
        if unwritten is None or root is None:
            return
        main_dir, new, store = unwritten
        try:
            with ProjectLock(root / STATE_DIR, wait=False, on_wait=self._on_wait, create=False):
                if self._still_warm(store):
                    write_seal(main_dir, new)
        except (Busy, OSError):  # another build holds the lock: it seals what it finds
            pass
