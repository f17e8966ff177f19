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

import os
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from pivotbuild.build.executors import runner
from pivotbuild.build.executors.lifeline import Lifeline
from pivotbuild.cache.outputs import Captured, OutputCache
from pivotbuild.events import Event, Log, Message, StageStarted
from pivotbuild.model import Stage
from pivotbuild.paths import joined
from pivotbuild.state.files import ABSENT_ERRNOS, remove_tree
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


def prepare(root: Path, stage: Stage, spec: runner.RunSpec) -> str:
    """Before each attempt: the outputs prepared (see `prepare_outputs`) and
    the stage's `workdir` there (the project's root is).  Returns a problem
    to report, or ""."""
    return prepare_outputs(root, stage) or (_missing_dir(spec.cwd) if stage.workdir else "")


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


def prepare_outputs(root: Path, stage: Stage, *, dirs: bool = True) -> str:
    """Remove non-persist outputs (so a stale file cannot pass for a new one) and,
    with `dirs`, create their parent directories (for a stage that writes
    them here: the Dask executor checks them out, directories and all, or
    leaves them on the remote).  Returns a problem to report, or "".

    Runs before every stage, so it asks the file system as little as it can:
    one lstat per output, then one unlink (or rmtree) if it exists; and its
    directory is created only when a stat finds it missing (when the output
    existed, so does its directory)."""
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
                        remove_tree(path)
                    else:  # a file, or a symlink (to a directory too: the link goes, not what it points to)
                        os.unlink(path)
                    continue
                need = path.rpartition("/")[0] or "/"  # (`path` is absolute: os.path.dirname's answer)
            else:
                need = path if out.is_dir else path.rpartition("/")[0] or "/"
            if dirs and not os.path.isdir(need):
                Path(need).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"pivotbuild: cannot prepare output {out.path}: {exc.strerror}"
    return ""
