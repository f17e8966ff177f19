"""What a Dask worker runs for one stage: `run_task`, a plain function of a
`Task`, shipped by reference (the worker imports this module: it needs
pivotbuild installed, not the project's directory, and never the CLI).

The task makes a scratch directory of its own under the worker's temporary
directory, fetches the stage's inputs from the project's remote by hash
(transfer.fetch into a cache in the scratch directory, then checked out to
their paths relative to the project root), runs the command there with the
worker's environment plus the stage's `env:` and `PIVOT_STAGE`, under the
stage's timeout, then hashes its outputs, stores them to the remote
(transfer.push) and returns their records with the exit status and the last
lines printed.  If Dask cancels the task meanwhile (the build was
interrupted), the command is killed.  The scratch directory is removed
whatever happens.  A failure of the stage or of its transfers is a result,
never an exception, so that it comes back with the lines printed and says
what went wrong on which worker.

A `py:` stage's inputs include the project's Python files its code reaches,
and its function runs in a fresh interpreter of the worker's (`python -P -m
pivotbuild.build.executors.pyworker --once`, as a forked child runs it
locally), importing from the scratch directory: the pipeline's directory
there, then its root, first on `sys.path`.  The inputs of a stage with
`persist` or `incremental` outputs include those outputs as the project had
them, so the stage finds them in place, writable, as it would locally.
"""

from __future__ import annotations

import marshal
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from pivotbuild.build.executors import runner, scratch, stagework
from pivotbuild.build.executors.daskstream import Lines, this_task
from pivotbuild.build.executors.lifeline import Lifeline
from pivotbuild.build.executors.pystages import PyCall
from pivotbuild.cache.outputs import OutputCache
from pivotbuild.cache.store import Mode
from pivotbuild.model import Stage
from pivotbuild.remote import Remote, open_remote, transfer
from pivotbuild.state.kinds import DIR
from pivotbuild.state.records import FileRecord
from pivotbuild.structs import replace, struct


@struct(frozen=True, slots=True)
class Where:
    """The remote the task reads its inputs from and stores its outputs to:
    as `open_remote` takes it, with a directory as an absolute path."""

    name: str
    url: str
    settings: tuple[tuple[str, str], ...] = ()


@struct(frozen=True, slots=True)
class Task:
    """One stage to run on a worker: the stage (its shell, `env:`, outputs,
    directory and timeout), its command with `$@ $< $^` filled in, its
    inputs (files and directories, relative to the project root, each on the
    remote), the remote, and a `py:` stage's call (its module, function and
    context: its directories are the project's, which the worker's scratch
    directory stands for)."""

    stage: Stage
    command: str
    inputs: tuple[FileRecord, ...]
    remote: Where
    py: PyCall | None = None
    topic: str = ""  # the Dask event topic its lines are published on as printed (daskstream.py)


@struct(frozen=True, slots=True)
class TaskResult:
    """How the stage ended, the (stream, line) it printed last, and, if it
    succeeded, its outputs' records (each on the remote) or the outputs it
    did not create; `host` names the worker's machine, for messages."""

    result: runner.RunResult
    lines: tuple[tuple[str, str], ...] = ()
    outs: tuple[FileRecord, ...] = ()
    missing: tuple[str, ...] = ()
    host: str = ""
    printed: int = 0  # lines in all: `lines` holds the last of them (daskstream.TAIL)
    run: str = ""  # which run of the task this is (daskstream.Lines.run)


def run_task(task: Task) -> TaskResult:
    """Run `task` on this worker (see the module's docstring)."""
    host = os.uname().nodename
    place = scratch.make()
    lines = Lines(task.topic)
    try:
        result, outs, missing = _run(task, place / "work", lines)
    except transfer.TransferError as exc:
        result, outs, missing = runner.failed(f"pivotbuild: on the worker {host}: {exc}"), (), ()
    except Exception as exc:  # a bug of ours, or a worker that cannot do it: the stage fails, with why
        result, outs, missing = runner.failed(f"pivotbuild: on the worker {host}: {exc!r}"), (), ()
    finally:
        scratch.remove(place)
        lines.close()
    return TaskResult(result, tuple(lines.tail), outs, missing, host, lines.total, lines.run)


def _run(task: Task, work: Path, lines: Lines) -> tuple[runner.RunResult, tuple[FileRecord, ...], tuple[str, ...]]:
    work.mkdir()
    remote = open_remote(work, task.remote.name, task.remote.url, dict(task.remote.settings))
    outputs = OutputCache(work, lambda _text: None)  # its cache: in the scratch directory, gone with it
    try:
        return _stage(task, work, lines, remote, outputs)
    finally:
        outputs.close()  # (its pack's descriptors: a worker runs many tasks)


def _stage(
    task: Task, work: Path, lines: Lines, remote: Remote, outputs: OutputCache
) -> tuple[runner.RunResult, tuple[FileRecord, ...], tuple[str, ...]]:
    """The stage of `task`, in `work`: its inputs fetched, run, its outputs stored."""
    stage = task.stage
    cache = outputs.cache
    report = transfer.fetch(cache, remote, task.inputs, ())
    if report.problems:
        return runner.failed(f"pivotbuild: the stage's inputs are not all on the remote: {report.problems[0]}"), (), ()
    for rec in task.inputs:
        dest = work / rec.path
        if not dest.resolve().is_relative_to(work.resolve()):  # (the build refuses such paths: never write outside)
            return runner.failed(f"pivotbuild: {rec.path} is outside the project"), (), ()
        if rec.kind == DIR:
            cache.checkout_dir(rec.hash, dest, Mode.COPY)
        else:
            cache.checkout_file(rec.hash, dest, Mode.COPY, rec.executable)
    cwd = work / stage.workdir if stage.workdir else work
    cwd.mkdir(parents=True, exist_ok=True)  # (a directory with no inputs in it exists in the project only)
    problem = stagework.prepare_outputs(work, stage)
    if problem:
        lines.add("stderr", problem)
        return runner.failed(problem), (), ()
    env = {**os.environ, **dict(stage.env), "PIVOT_STAGE": stage.id.label("")}
    argv = runner.stage_argv(stage.shell, task.command) if task.py is None else _py_argv(task.py, stage, work)
    spec = runner.RunSpec(argv=argv, cwd=cwd, env=env, timeout=stage.timeout)
    cancel, finished = threading.Event(), threading.Event()
    cancelled = _cancelled_check()
    if cancelled is not None:
        threading.Thread(target=_watch, args=(cancelled, cancel, finished), daemon=True).start()
    try:
        result = runner.run(spec, lines.add, cancel, _lifeline())
    finally:
        finished.set()
    if not result.ok:
        return result, (), ()
    # Every output travels through the remote, `cache: no` ones too.
    stored = replace(stage, outs=tuple(replace(out, cache=True) for out in stage.outs))
    captured = outputs.capture(stored, {}, True)
    if captured.missing:
        return result, (), captured.missing  # (pivotbuild fails it, as a stage of its own that did not write them)
    report = transfer.push(cache, remote, captured.outs, ())
    if report.problems:
        return runner.failed(f"pivotbuild: the stage's outputs could not be stored: {report.problems[0]}"), (), ()
    return result, captured.outs, ()


def _py_argv(call: PyCall, stage: Stage, work: Path) -> tuple[str, ...]:
    """The command that runs a `py:` stage's call in a fresh interpreter of
    the worker's (pyworker.py, `--once`: the request beside `work`), its
    module imported from `work`'s copy of the pipeline's directory, then of
    the project root; an ImportError's traceback names this worker."""
    request = {
        "module": call.module,
        "function": call.function,
        "path": list(dict.fromkeys([str(work / stage.id.pipeline), str(work)])),
        "ctx": dict(call.ctx),
        "host": os.uname().nodename,
    }
    path = work.parent / "py-call"
    path.write_bytes(marshal.dumps(request))
    # -P: not the directory it starts in first on sys.path (a project's json.py is not its json)
    return (sys.executable, "-P", "-m", "pivotbuild.build.executors.pyworker", "--once", str(path))


_LIFELINE: list[Lifeline] = []  # this worker process's (one, made with its first stage)
_LIFELINE_LOCK = threading.Lock()


def _lifeline() -> Lifeline:
    """The watchdog that kills this worker's running stages if the worker is
    killed (lifeline.py: as pivotbuild's own kills its local stages), so a
    stage Dask runs again elsewhere does not also go on running here."""
    with _LIFELINE_LOCK:
        if not _LIFELINE:
            _LIFELINE.append(Lifeline())
        return _LIFELINE[0]


def _cancelled_check() -> Callable[[], bool] | None:
    """Whether Dask has cancelled the task running this (its future was
    cancelled: the build was interrupted or stopped it), as the worker knows
    it; None outside a Dask worker.  (Dask cannot stop a running task: the
    task stops its command itself.)"""
    task = this_task()
    if task is None:
        return None
    worker, key = task

    def cancelled() -> bool:
        state = worker.state.tasks.get(key)
        return state is None or state.state == "cancelled"

    return cancelled


def _watch(cancelled: Callable[[], bool], cancel: threading.Event, finished: threading.Event) -> None:
    """Set `cancel` (the command is then killed) once Dask cancels the task."""
    while not finished.wait(runner.TICK_S):
        if cancelled():
            cancel.set()
            return
