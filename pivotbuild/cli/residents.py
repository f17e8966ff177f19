"""The engines a build server keeps between builds (cli/server.py): one per
(directory, -f, overrides, --all), each with the project and graph its
compiled plan was restored from, so that a build with work reads neither
the plan nor the project's lockfiles and stat caches again (the engine, being
resident, checks those against the files: build/engine.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from pivotbuild.build.engine import Engine
    from pivotbuild.build.fastpath import Checked
    from pivotbuild.build.options import BuildOptions
    from pivotbuild.graph import BuildGraph
    from pivotbuild.project import Project
    from pivotbuild.state.seal import Seal

KEPT = 4  # engines kept (projects, or one project from several directories)


class Residents:
    """The engines kept between builds: one per (directory, -f, overrides,
    --all), with the compiled plan its project was restored from; a plan
    that changed gets a new engine.  The most recent KEPT are kept."""

    def __init__(self) -> None:
        self._engines: dict[tuple[object, ...], tuple[str, Engine, Project, BuildGraph]] = {}
        # What the last build left for after its client's answer (Engine.later):
        # the server runs it then (`after`), before its next build.
        self.later: list[Callable[[], None]] = []
        self._early: Seal | None = None  # the seal whose stats began as a request came (`look_early`)

    def engine(self, checked: Checked, options: BuildOptions) -> tuple[Engine, Project, BuildGraph] | None:
        """The engine for this build, and its project and graph (None if the
        plan does not restore: the ordinary path compiles)."""
        from pivotbuild.build.engine import Engine
        from pivotbuild.events import Reporter
        from pivotbuild.state import plan

        key = (str(options.cwd), options.file, tuple(sorted(options.overrides.items())), options.all_pipelines)
        plan_id = checked.loaded.index.plan_id
        held = self._engines.pop(key, None)
        if held is None or held[0] != plan_id:
            restored = plan.restore(checked.loaded, options.cwd)
            if restored is None:
                return None
            reporter: Reporter = _Nobody()
            held = (plan_id, Engine(reporter, resident=True), *restored)
        held[1].later = self.later
        self._engines[key] = held
        while len(self._engines) > KEPT:
            self._engines.pop(next(iter(self._engines)))[1].kept.write()
        return held[1], held[2], held[3]

    def after(self) -> None:
        """Run what the last build left for after its client's answer."""
        work, self.later[:] = list(self.later), []
        for item in work:
            item()

    def seal(self, main_dir: str, plan_id: str) -> Seal | None:
        """The seal the most recent build of the pipeline in `main_dir` made
        for this plan, kept since (Engine.kept: build/kept.py), if an engine has one:
        the fast check's, instead of the file (which may not be written yet)."""
        for _, engine, _, _ in reversed(self._engines.values()):
            found = engine.kept.get(main_dir, plan_id)
            if found is not None:
                return found
        return None

    def look_early(self) -> None:
        """A request came: begin the stats of the seal the most recent build
        kept, on a thread, for the fast check of the build it likely asks for
        (Seal.look_early); `end_early` once that build is over."""
        for _, engine, _, _ in reversed(self._engines.values()):
            kept = engine.kept.any()
            if kept is not None:
                kept.look_early()
                self._early = kept
                return

    def end_early(self) -> None:
        """The build is over: an early look it did not take is waited for, and dropped."""
        early, self._early = self._early, None
        if early is not None:
            early.end_early()

    def write_seals(self) -> None:
        """Write the seals the engines keep and have not written (the server is idle, or ends)."""
        for _, engine, _, _ in list(self._engines.values()):
            engine.kept.write()

    @staticmethod
    def idle(engine: Engine) -> None:
        """Between builds an engine keeps no reporter and no job server (each build brings its own)."""
        engine.reporter, engine.jobserver = _Nobody(), None


class _Nobody:
    """The reporter of an engine between builds (each build sets its own)."""

    def handle(self, event: object) -> None:
        pass

    def close(self) -> None:
        pass
