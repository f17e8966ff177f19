"""A plain build run straight from the fast path, without click.

The front door (cli/fast.py) has parsed the options (only those the fast
path takes) and entered the `-C` directories; the fast check found the
compiled plan fresh and read the seal, or found that the plan cannot answer
(there is none yet, the Pivotfile changed since, a target is a pattern or a
path).  What is left is the build itself.  Importing and running click costs
25 to 35 ms, and reading the plan again more, before the first stage, so
this runs the engine directly, with what was already read if anything was
(else the engine loads the project as it always does, compiling the
Pivotfile if it must).  It must behave exactly as `pivotbuild` through click:
the same options (buildargs.to_options), reporter, SIGTERM handling,
messages and exit statuses (errors go through cli/command.py's
`exit_status`).
"""

from __future__ import annotations

from pathlib import Path

from pivotbuild.cli.buildargs import to_options

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from pivotbuild.build.engine import Engine, Preloaded
    from pivotbuild.build.fastpath import Checked
    from pivotbuild.cli.buildargs import BuildArgs
    from pivotbuild.cli.residents import Residents


def build(argv: list[str], args: BuildArgs, checked: Checked | None, residents: Residents | None = None) -> int | None:
    """The build's exit status; None (having done nothing) if the ordinary
    command line must run after all.  `checked`: what the fast check read
    (None: the plan could not answer; the engine loads the project itself).
    `residents`: a build server's engines, one of which builds (its project,
    lockfiles and stat caches kept since its last build)."""
    engine: Engine | None = None
    options = to_options(args, Path.cwd())
    preloaded: Preloaded | None = None
    if checked is None:
        if residents is not None:
            return None  # (a server keeps its engines by their plan: without one, the command line runs as before)
    elif residents is None:
        from pivotbuild.state import plan

        restored = plan.restore(checked.loaded, options.cwd)
        if restored is None:
            return None
        project, graph = restored
    else:
        found = residents.engine(checked, options)
        if found is None:
            return None
        engine, project, graph = found
    try:
        from pivotbuild.build.engine import Engine, Preloaded
        from pivotbuild.cli.running import leave_if_starting, make_reporter, makes_pool, terminate_as_interrupt

        reporter = make_reporter(options)
        with terminate_as_interrupt(), makes_pool(options) as jobserver:
            if engine is None:
                engine = Engine(reporter, jobserver=jobserver)
                leave_if_starting()
            else:
                engine.reporter, engine.jobserver = reporter, jobserver
            try:
                if checked is not None:
                    preloaded = Preloaded(project, graph, checked.sealed, frozenset(checked.held))
                return engine.build(options, preloaded=preloaded)
            finally:
                reporter.close()
                if residents is not None:
                    residents.idle(engine)
    except (Exception, KeyboardInterrupt) as exc:
        from pivotbuild.cli.command import exit_status, out_of_command

        return exit_status(out_of_command(exc), argv)
