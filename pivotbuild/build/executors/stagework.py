"""The steps of one stage: its command's spec, its outputs prepared before
each attempt (retries), then, once it succeeded, its outputs hashed and
handed to the cache.  The local executor takes them one at a time, as its
stages' events come (local.py); `run_stage` takes them all in one blocking
call, for an executor with threads of its own.

Nothing here touches the build's shared state: events go out through `put`,
the stage's stat-cache entries are only read, and the result is returned for
the scheduling loop (build/run.py) to record.
"""

from __future__ import annotations

import functools
import os
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from pivotbuild.build.executors import runner
from pivotbuild.build.executors.lifeline import Lifeline
from pivotbuild.build.executors.plaincommand import PlainCommands
from pivotbuild.build.executors.spawn import is_ours
from pivotbuild.cache import pages
from pivotbuild.cache.outputs import Captured, OutputCache
from pivotbuild.cache.pack import PACK_MAX
from pivotbuild.events import Event, Log, Message, StageStarted
from pivotbuild.model import Stage
from pivotbuild.paths import STATE_DIR, joined
from pivotbuild.state.files import ABSENT_ERRNOS, TRASH, remove_tree, remove_tree_later, unlink
from pivotbuild.state.snapshot import Snapshot
from pivotbuild.state.stamps import Stamp
from pivotbuild.state.statcache import StatEntry
from pivotbuild.structs import replace


def run_stage(
    stage: Stage,
    snap: Snapshot,
    label: str,
    *,
    root: Path,
    environ: Mapping[str, str],
    outputs: OutputCache,
    known: Mapping[str, StatEntry],
    store: bool,
    cancel: threading.Event,
    put: Callable[[Event], None],
    started: Callable[[], int],
    lifeline: Lifeline,
) -> tuple[runner.RunResult, Captured | None]:
    """Run `stage` to its result, blocking (for an executor with threads of its
    own; the local executor follows its stages without: local.py); on
    success, its outputs hashed (and, with `store`, on their way into the
    cache).  `started()` numbers a retry's event; `lifeline` kills the stage
    if pivotbuild dies.  Never raises: an error of ours fails the stage."""
    result: runner.RunResult | None = None
    try:
        spec = stage_spec(stage, snap, root, environ)
        for attempt in range(1, stage.retry + 2):
            if attempt > 1:
                put(retried(label, started(), attempt, stage.retry))
            problem = prepare(root, stage, spec)
            if problem:
                put(Log(label, "stderr", problem))
                return runner.failed(problem), None
            result = runner.run(spec, lambda stream, line: put(Log(label, stream, line)), cancel, lifeline)
            if result.ok or result.cancelled:
                break
    except Exception as exc:  # a bug in our own code: fail the stage, keep the build sane
        return runner.internal_error(exc), None
    assert result is not None
    if not result.ok:
        return result, None
    return capture(stage, result, outputs=outputs, known=known, store=store, label=label, put=put)


def stage_spec(stage: Stage, snap: Snapshot, root: Path, environ: Mapping[str, str]) -> runner.RunSpec:
    """What running `stage` runs: its command (or, for a `py:` stage, its
    call), in its directory, with its environment and timeout."""
    env = {**environ, **dict(stage.env), "PIVOT_STAGE": stage.id.label("")}
    cwd = root / stage.workdir if stage.workdir else root
    if stage.py is not None:
        from pivotbuild.build.executors.pystages import py_call  # (a build of shell stages does without)

        call = py_call(stage, root, snap.expanded_deps)
        return runner.RunSpec(argv=(f"py:{stage.py}",), cwd=cwd, env=env, timeout=stage.timeout, py=call)
    return runner.RunSpec(argv=runner.stage_argv(stage.shell, snap.command), cwd=cwd, env=env, timeout=stage.timeout)


def retried(label: str, number: int, attempt: int, retries: int) -> StageStarted:
    """The event of a stage's `attempt` (2 and on) starting."""
    return StageStarted(label, number, 0, f"retry {attempt - 1} of {retries}", attempt)


def prepare(
    root: Path,
    stage: Stage,
    spec: runner.RunSpec,
    plain: PlainCommands | None = None,
    replaced: Callable[[str, os.stat_result], None] | None = None,
) -> str:
    """Before each attempt: the outputs prepared (see `prepare_outputs`) and
    the stage's `workdir` there (the project's root is).  With `plain` (the
    local executor's rules for a plain command, when it starts `spec` itself
    or through the shell), the small output the stage's `>` empties as it
    starts is left for it to empty (`emptied`).  Returns a problem to
    report, or "".  `replaced`: as `prepare_outputs`'."""
    emptied = None if plain is None or spec.py is not None else functools.partial(_emptied, plain, spec)
    problem = prepare_outputs(root, stage, emptied=emptied, trash=True, replaced=replaced)
    return problem or (_missing_dir(spec.cwd) if stage.workdir else "")


def _emptied(plain: PlainCommands, spec: runner.RunSpec) -> str | None:
    """The file (absolute, normalized) the stage's script empties as it starts,
    before it runs anything: the target of the `>` (not `>>`, which keeps
    what the file held) of a script that is one plain command
    (`PlainCommands.plain`), run in our own directory; else None.  The
    shell, or our direct start (spawn._opened, just before the spawn), opens
    it with O_TRUNC before the program runs, so nothing it held before can
    outlast the stage's start."""
    if not is_ours(spec.cwd):
        return None
    found = plain.plain(spec.argv, keep=True)  # (kept for its start: spawn.begin, as the stage is ours)
    if found is None or found[1] is None or found[1][1] & os.O_APPEND:
        return None
    cwd = str(spec.cwd)
    target = found[1][0]
    full = target if target[:1] == "/" else f"{cwd}/{target}"
    return full if "/." not in full and "//" not in full else os.path.normpath(full)  # (most need no normalizing)


def capture(
    stage: Stage,
    result: runner.RunResult,
    *,
    outputs: OutputCache,
    known: Mapping[str, StatEntry],
    store: bool,
    label: str,
    put: Callable[[Event], None],
    stats: list[os.stat_result | None] | None = None,
) -> tuple[runner.RunResult, Captured | None]:
    """After the stage succeeded (`result`): its outputs hashed and, with
    `store`, on their way into the cache (copied later, by the storer, off
    the path of the stages waiting for this one); `stats`, the outputs',
    if the caller took them as the stage ended.  Safe in any thread; never
    raises: an error of ours fails the stage."""
    linked: list[tuple[str, str, Stamp]] = []
    try:
        try:
            return result, outputs.capture(stage, known, store, defer=True, stats=stats, linked=linked)
        except OSError as exc:
            if not store:
                raise
            why = exc.strerror or str(exc)
            text = f"could not store the outputs of {label} in the cache ({why}); recorded, but not cached"
            put(Message(text, "warning"))
            # Not stored, so the next build decides the stage again and stores
            # what the cache lacks; the outputs the first try linked stay
            # their objects, and the build's end looks at them (Storer).
            again = outputs.capture(stage, known, False)
            return result, replace(again, linked=tuple(linked), uncached=True)
    except OSError as exc:
        return runner.failed(f"pivotbuild: could not hash or store the outputs: {exc}"), None
    except Exception as exc:  # a bug in our own code: fail the stage, keep the build sane
        return runner.internal_error(exc), None


def _missing_dir(cwd: Path) -> str:
    return "" if os.path.isdir(cwd) else f"pivotbuild: the stage's directory {cwd} does not exist"


def prepare_outputs(
    root: Path,
    stage: Stage,
    *,
    dirs: bool = True,
    emptied: Callable[[], str | None] | None = None,
    trash: bool = False,
    replaced: Callable[[str, os.stat_result], None] | None = None,
) -> str:
    """Remove non-persist outputs (so a stale file cannot pass for a new one) and,
    with `dirs`, create their parent directories (for a stage that writes
    them here: the Dask executor checks them out, directories and all, or
    leaves them on the remote).  Returns a problem to report, or "".

    `emptied`: asked (once, and only if an output exists that it could
    spare) for the file the stage's command empties as it starts (see
    `_emptied`).  That file is left in place if it is small (at most
    EMPTIED_MAX bytes), a plain file of ours that only this name links to
    and that we may write: the command's own open empties it, as make's and
    ninja's stages do, and the file system neither frees nor allocates an
    inode for it.  On ext4 a file created soon after others were removed
    waits while the allocator skips every inode freed in the last minute
    or more (`recently_deleted`): 0.4 to 0.7 ms a file in this project's
    benchmarks, where each rebuild's own removals add to them, against 0.05
    to 0.12 ms to empty one (docs/performance.md, the twenty-third session).
    A file linked elsewhere (hardlink mode's object), a symlink, a
    read-only or a larger file is removed as before (emptying a large one
    makes its stage free its blocks, and ext4 then writes the new one back
    at its close).  Hardlink mode's object of a MiB or more has its pages
    let go as its link goes (cache/pages.py: the rerun's output takes that
    memory, as a truncated file's would).  A file's blocks, where the
    removal frees them, are freed on a thread (state/files.py, `Frees`),
    and a directory, with `trash` (`root` the project's), is moved into
    its `.pivot/trash/` and removed on that thread: freeing blocks can wait for
    the disk (ext4 with `discard`), and each of a directory's files has
    its own.  `replaced` is told of each file of ours removed (its path
    and lstat), before its removal: the local executor's, in the default
    mode, lets go of the memory of the version's copy in the cache
    (cache/pages.py, `let_go`).

    Runs before every stage, so it asks the file system as little as it can:
    one lstat per output, then one unlink (or rmtree) if it exists; and its
    directory is created only when a stat finds it missing (when the output
    existed, so does its directory)."""
    target: str | bool | None = False  # (False: not asked yet)
    for out in stage.outs:
        path = joined(root, out.path)
        try:
            if not out.persist and not out.incremental:
                try:
                    st = os.lstat(path)
                except OSError as exc:
                    if exc.errno not in ABSENT_ERRNOS:
                        raise
                else:  # it exists, and so does its directory
                    if stat.S_ISDIR(st.st_mode):
                        if trash:
                            remove_tree_later(path, root / STATE_DIR / TRASH)
                        else:
                            remove_tree(path)
                    elif emptied is not None and _ours_to_empty(st):
                        if target is False:
                            target = emptied()
                        if path != target:
                            unlink(path, st)
                    else:  # a file, or a symlink (to a directory too: the link goes, not what it points to)
                        if st.st_nlink > 1:  # (hardlink mode's object: its pages let go, see cache/pages.py)
                            pages.release(path, st)
                        elif replaced is not None and stat.S_ISREG(st.st_mode):
                            replaced(path, st)
                        unlink(path, st)  # (its blocks freed on a thread: state/files.py, `Frees`)
                    continue
                need = path.rpartition("/")[0] or "/"  # (`path` is absolute: os.path.dirname's answer)
            else:
                need = path if out.is_dir else path.rpartition("/")[0] or "/"
            if dirs and not os.path.isdir(need):
                Path(need).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"pivotbuild: cannot prepare output {out.path}: {exc.strerror}"
    return ""


EMPTIED_MAX = PACK_MAX  # an output its command empties is left to it up to this size (see prepare_outputs)
_EUID = os.geteuid()


def _ours_to_empty(st: os.stat_result) -> bool:
    """Whether a file of this lstat may be emptied in place (`prepare_outputs`):
    a small regular file with one link, ours, that its owner may write."""
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and st.st_size <= EMPTIED_MAX
        and st.st_uid == _EUID
        and bool(st.st_mode & stat.S_IWUSR)
    )
