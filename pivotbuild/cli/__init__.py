"""The `pivotbuild` command: flags in, calls into the core, exit codes out.

`main` first offers the invocation to the front door of a plain build
(fast.py), which answers a no-op with almost no imports and runs a plain
build without click; only if that cannot answer is the click command line
imported and run.  Both read the build's options as buildargs.py declares
them.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False  # not typing's: the no-op fast path does not import typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

    from pivotbuild.cli.residents import Residents


def run() -> NoReturn:
    """The `pivotbuild` program (and `python -m pivotbuild`): `main`, then out.

    When `main` returns, everything pivotbuild writes is written, and fsync'ed
    where it must be; the workers are idle and the reporter closed.  What an
    ordinary interpreter exit would add is freeing every object one by one and
    a last full garbage collection: 0.1 to 0.3 s after a 1,000-stage build,
    for nothing.  So this flushes the standard streams and leaves with
    `os._exit`.  The garbage collector stays off to the end (`main` turns it
    back on for a caller that goes on: here the first allocation after that
    would walk every live object, 5 to 10 ms after a 1,000-stage build)."""
    gc.disable()
    # The launcher (bin/launcher.c: the installed `pivotbuild`, where it could
    # be compiled) that ran this program, if one did: out of the environment
    # before anything reads it, so that the stages and the context never see it.
    launcher = os.environ.pop("PIVOT_LAUNCHER", None)
    from pivotbuild.cli import client

    offered = client.offer(sys.argv[1:], launcher)  # a build server's, if one runs (cli/client.py)
    if not isinstance(offered, int) and offered.start:
        client.STARTS = True  # (the first build in a while: its copies are left for the server, copying.Left)
    code = offered if isinstance(offered, int) else main()
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib.suppress: an import the no-op spares)
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`pivotbuild | head`), a closed stream
            pass
    if not isinstance(offered, int) and offered.start:
        copying = sys.modules.get("pivotbuild.cache.copying")
        client.start_server(copying.LEFT.left() if copying is not None else [])  # for the next build
    files = sys.modules.get("pivotbuild.state.files")
    if files is not None:
        files.FREES.drain()  # (the old output directories the build moved aside, removed: state/files.py)
    os._exit(code)


def main(argv: Sequence[str] | None = None, *, residents: Residents | None = None) -> int:
    """Run the command line; return the exit status (never raises).

    The cyclic garbage collector is off while it runs.  A command is short-lived
    and makes few reference cycles, but it builds large acyclic structures (a
    10,000-stage lockfile is some 400,000 objects), and the collector, walking
    every live object again and again as they accumulate, took three quarters
    of decoding one (0.53 s of 0.68 s) and nine tenths of encoding one."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _main(argv, residents)
    finally:
        if was_enabled:
            gc.enable()


def _main(argv: Sequence[str] | None, residents: Residents | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # completion.COMPLETE_VAR, spelled out: this path stays import-free until it knows.
    instruction = os.environ.get("_PIVOTBUILD_COMPLETE")
    if instruction:  # the shell asks for completions (click's protocol): never the fast path, never a build
        from pivotbuild.cli.completion import answer

        return answer(instruction)
    if _cwd_is_gone(args):
        print(
            "pivotbuild: the current directory no longer exists (was it deleted or replaced?); "
            "cd into the project again, or pass -C DIR",
            file=sys.stderr,
        )
        return 2
    from pivotbuild.cli.fast import try_fast

    code = try_fast(args, residents)
    if code is not None:
        return code
    from pivotbuild.cli.command import main as full

    return full(args)


def _cwd_is_gone(args: list[str]) -> bool:
    """True if the working directory was deleted and no absolute -C says where to go."""
    try:
        os.getcwd()
    except FileNotFoundError:
        pass
    else:
        return False
    from pivotbuild.cli.buildargs import directory_values

    return not any(os.path.isabs(d) for d in directory_values(args))


__all__ = ["main"]
