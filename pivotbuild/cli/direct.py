"""A plain build run straight from the fast path, without click.

quick.py has parsed the options (only the plain ones it knows), found the
compiled plan fresh and read the seal; what is left is the build itself.
Importing and running click and reading the plan again cost a build with work
some 30 to 50 ms before its first stage, so this runs the engine directly with
what was already read.  It must behave exactly as
`pivotbuild` through click: the same options, reporter, SIGTERM handling,
messages and exit statuses (errors go through cli/command.py's `exit_status`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pivotbuild.build.options import BuildOptions

if TYPE_CHECKING:
    from pivotbuild.quick import Checked, _Args


def build(argv: list[str], args: _Args, checked: Checked) -> int | None:
    """The build's exit status; None (having done nothing) if the ordinary
    command line must run after all."""
    from pivotbuild.state import plan

    where = Path.cwd().joinpath(*args.directories)
    restored = plan.restore(checked.loaded, where)
    if restored is None:
        return None
    if args.directories:
        try:
            os.chdir(where)  # as `-C` does through click, one directory after another
        except OSError:
            return None  # click says why
    options = BuildOptions(
        cwd=Path.cwd(),
        file=Path(args.file) if args.file is not None else None,
        targets=tuple(args.targets),
        overrides=dict(args.overrides),
        jobs=args.jobs,
        load_average=args.load_average,
        keep_going=args.keep_going,
        question=args.question,
        quiet=args.quiet,
        no_cache=args.no_cache,
        no_wait=args.no_wait,
    )
    project, graph = restored
    try:
        from pivotbuild.build.engine import Engine, Preloaded
        from pivotbuild.cli.running import make_reporter, terminate_as_interrupt

        reporter = make_reporter(options)
        with terminate_as_interrupt():
            try:
                return Engine(reporter).build(
                    options, preloaded=Preloaded(project, graph, checked.sealed, frozenset(checked.held))
                )
            finally:
                reporter.close()
    except (Exception, KeyboardInterrupt) as exc:
        from pivotbuild.cli.command import exit_status

        return exit_status(exc, argv)
