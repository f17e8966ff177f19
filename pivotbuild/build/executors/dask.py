"""The Dask executor: each admitted stage runs as a task on a Dask distributed
cluster (STATE.md, Executors; docs/dask.md).

pivotbuild keeps deciding, scheduling, recording and reporting: the build
loop admits a stage (`-j` bounds the tasks in flight) and this executor, in
a thread of its own per stage, sends the stage's input files to the
project's remote as content-addressed objects (through the cache and
transfer.push, as `pivotbuild push` sends them), submits `dasktask.run_task`,
and waits for its answer.  A worker runs the stage in a scratch directory of
its own and stores its outputs to the remote; here they are fetched into the
cache (transfer.fetch), checked out into the project, and captured as the
local executor captures what its stages wrote (stagework.capture), so the
recorder sees a finished stage either way.  A failed attempt is retried as
`retry:` says, by submitting it again.

The transfers go through the build's own cache, each in its stage's thread,
several at once: the cache stores and reads from many threads (its pack of
small objects is thread-safe), and the fetches leave that pack unindexed
(transfer.fetch `index=False`): the build indexes it when it ends, once
every job has reported, so no index is written while a transfer runs.  The
objects fetched are then already in the cache when capturing stores the
outputs checked out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pivotbuild.build.executors import stagework
from pivotbuild.build.executors.base import Done, Inbox, Job
from pivotbuild.build.executors.choice import ExecutorError
from pivotbuild.build.executors.daskstream import Streams
from pivotbuild.build.executors.dasktask import Task, TaskResult, Where, run_task
from pivotbuild.build.executors.pystages import PyCall, py_call
from pivotbuild.build.executors.runner import RunResult, failed, internal_error
from pivotbuild.cache.outputs import Captured, OutputCache
from pivotbuild.cache.store import Mode
from pivotbuild.events import Log
from pivotbuild.model import Stage
from pivotbuild.pysource import SourceError, imported_files
from pivotbuild.remote import Remote, config, open_remote, transfer
from pivotbuild.state.hashing import (
    ENTRY_LINK,
    ManifestEntry,
    hash_bytes,
    hash_file,
    link_hash,
    manifest_bytes,
    walk_dir,
)
from pivotbuild.state.kinds import DIR, FILE, GLOB
from pivotbuild.state.records import FileRecord
from pivotbuild.state.snapshot import Snapshot
from pivotbuild.structs import replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pivotbuild.build.engine import ExecutorFactory

CONNECT_TIMEOUT_S = 5.0  # a scheduler that does not answer by then is unreachable
INSTALL = 'the dask executor needs Dask: pip install "pivotbuild[dask]"'
NEEDS_REMOTE = (
    "the dask executor needs a remote, for the stages' files to travel through:"
    " pivotbuild remote add --default NAME URL (a directory or object store the workers reach too)"
)


def _patience() -> float:
    """How long a stage waits for the cluster to have a worker, or its
    scheduler to answer: PIVOT_DASK_WAIT_S seconds, else `_STRANDED_S`."""
    try:
        return max(float(os.environ["PIVOT_DASK_WAIT_S"]), 0.0)
    except (KeyError, ValueError):
        return _STRANDED_S


_POLL_S = 2.0  # how often a waiting stage asks whether the cluster can still run it
_STRANDED_S = 60.0  # how long a stage waits for a worker, or for the scheduler to answer (PIVOT_DASK_WAIT_S)


def dask_factory(address: str, settings: config.Config, root: Path) -> ExecutorFactory:
    """The factory of executors running stages on the scheduler at `address`
    (tcp://HOST:PORT), through the project's default remote; the remote is
    opened now (ExecutorError if it cannot be), the scheduler connected to
    when the first stage starts (a build that runs nothing on the cluster
    neither imports Dask nor needs the cluster up)."""
    remote, where = _remote(settings, root)

    def make(root: Path, outputs: OutputCache, inbox: Inbox, cancel: threading.Event, *, store: bool) -> DaskExecutor:
        return DaskExecutor(root, outputs, inbox, cancel, store=store, address=address, remote=remote, where=where)

    return make


def connect(address: str) -> Any:
    """A Dask client of the scheduler at `address` (`Any`: distributed's
    types are partial).  A port nobody listens on is said at once (Dask
    itself would try again until its timeout)."""
    try:
        import distributed
    except ImportError:
        raise ExecutorError(INSTALL) from None
    # Dask logs to stderr (its loggers have levels and handlers of their own);
    # what goes wrong reaches the user as pivotbuild's own one-line messages.
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    parsed = urlsplit(address)
    client: Any = distributed.Client  # (untyped)
    try:
        socket.create_connection((parsed.hostname or "", parsed.port or 0), timeout=CONNECT_TIMEOUT_S).close()
        return client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ExecutorError(
            f"cannot reach the Dask scheduler at {address} ({why}); start it, or fix --executor"
            " or [executor] address in .pivot/config.toml"
        ) from None


def _remote(settings: config.Config, root: Path) -> tuple[Remote, Where]:
    """The project's default remote, opened, and as a worker opens it."""
    if not settings.remotes or (settings.default is None and len(settings.remotes) > 1):
        raise ExecutorError(NEEDS_REMOTE)
    name, url = settings.remote_url(None)
    extra = settings.settings.get(name, {})
    remote = open_remote(root, name, url, extra)
    if not config.is_object_store(url):
        url = str(config.directory_of(url, root).resolve())  # (the workers' directory is not the project)
    return remote, Where(name, url, tuple(sorted(extra.items())))


def refused(stage: Stage) -> str:
    """Why `stage` cannot run on Dask, or ""."""
    for path in (*(d.path for d in stage.deps), *(o.path for o in stage.outs), stage.workdir or "."):
        if _outside(path):
            return (
                f"pivotbuild: {path} is outside the project, and the dask executor carries only files"
                " under the project root; build this stage with --executor local"
            )
    return ""


def _outside(path: str) -> bool:
    """Is `path` (root-relative, or absolute) outside the project root (`/x`, `../x`, `a/../../x`)?"""
    normal = os.path.normpath(path)
    return os.path.isabs(normal) or normal == ".." or normal.startswith("../")


class DaskExecutor:
    """Runs stages as tasks of `client`'s cluster, their files travelling
    through `remote` (which the workers open as `where` says)."""

    def __init__(
        self,
        root: Path,
        outputs: OutputCache,
        inbox: Inbox,
        cancel: threading.Event,
        *,
        store: bool,
        address: str,
        remote: Remote,
        where: Where,
    ) -> None:
        self.root = root
        self.outputs = outputs
        self.inbox = inbox
        self.cancelled = cancel
        self.store = store
        self.address = address
        self.client: Any = None  # connected as the first stage starts (`start`)
        self.remote = remote
        self.where = where
        self.cache = outputs.cache  # the transfers' (see the module's docstring)
        self.on_remote: set[str] = set()  # objects known to be on the remote already
        self.elsewhere: dict[str, FileRecord] = {}  # outputs left on the remote (--no-checkout), by path
        # guards `running`, `started`, `on_remote`, `elsewhere` and `_cluster_seen`
        self._lock = threading.Lock()
        self._cluster_seen: tuple[float, str | None] = (-math.inf, None)  # when the cluster was last asked, its answer
        self.running: dict[Job, Any] = {}  # each running stage's future
        self._stopped: set[Job] = set()  # jobs cancel_job stopped (their futures' cancelling is ours)
        self.started = 0  # numbers a retry's event, as the build numbers starts
        self.streams = Streams(inbox.put)
        self.topic = ""

    def start(self, job: Job) -> None:
        if self.client is None:  # (only the loop's thread starts jobs)
            self._connect()
        with self._lock:
            self.started += 1
        threading.Thread(target=self._job, args=(job,), name=f"dask {job.label}", daemon=True).start()

    def cancel_job(self, job: Job) -> None:
        with self._lock:
            self._stopped.add(job)
            future = self.running.get(job)
        if future is not None:
            future.cancel()

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            futures = list(self.running.values())
        for future in futures:
            future.cancel()

    def _connect(self) -> None:
        """Connect to the scheduler (ExecutorError, one line, if it does not
        answer or Dask is not installed: the build stops, exit 2), and hear
        the stages' lines as the workers print them (daskstream.py; without
        the subscription they still come, with each result)."""
        self.client = connect(self.address)
        topic = str(self.client.id)  # (its events forgotten after the client: daskstream.py)
        try:
            self.client.subscribe_topic(topic, self.streams.heard)
        except Exception:  # (a client that cannot: the tails will do)
            return
        self.topic = topic

    def close(self) -> None:
        """Every job has reported: let go of the cluster (the build indexes what was fetched)."""
        if self.client is None:
            return
        with contextlib.suppress(Exception):  # (a scheduler gone: nothing to let go of)
            if self.topic:
                self.client.unsubscribe_topic(self.topic)
        with contextlib.suppress(OSError, TimeoutError):
            self.client.close()

    def _job(self, job: Job) -> None:
        """Run `job` to its result and report it (in the job's own thread)."""
        try:
            found = self._found_on_remote(job) if job.recorded is not None else None
            if found is not None:
                self.inbox.done(Done(job, RunResult(0, None, False, False, (), 0.0), found, restored=True))
                return
            result, captured = self._run(job)
        except Exception as exc:  # a bug in our own code: fail the stage, keep the build sane
            result, captured = internal_error(exc), None
        self.inbox.done(Done(job, result, captured if result.ok else None))

    def _run(self, job: Job) -> tuple[RunResult, Captured | None]:
        stage, label, put = job.stage, job.label, self.inbox.put
        assert job.snap is not None
        t0 = time.monotonic()
        problem = refused(stage) or stagework.prepare_outputs(self.root, stage, dirs=False)
        if problem:
            put(Log(label, "stderr", problem))
            return failed(problem), None
        try:
            call, extra = _carried(self.root, stage, job.snap)
            inputs = self._send_inputs(job.snap, extra=extra)
            task = Task(stage, job.snap.command, inputs, self.where, call, self.topic)
        except (transfer.TransferError, OSError) as exc:
            return failed(f"pivotbuild: the stage's inputs could not be sent to the remote: {exc}"), None
        answer: TaskResult | None = None
        for attempt in range(1, stage.retry + 2):
            if attempt > 1:
                with self._lock:
                    self.started += 1
                    number = self.started
                put(stagework.retried(label, number, attempt, stage.retry))
            answer = self._submit(job, task)
            if answer is None:
                return RunResult(None, None, False, True, (), time.monotonic() - t0), None
            if answer.result.ok or answer.result.cancelled:
                break
        assert answer is not None
        if not answer.result.ok:
            return answer.result, None
        if answer.missing:  # (as the local executor says it: the first declared output not written)
            return failed(f"declared output {answer.missing[0]} was not created"), None
        if not job.checkout:  # --no-checkout: recorded as the worker stored them, left on the remote
            return answer.result, self._leave(answer.outs)
        if answer.outs:  # (none if the stage did not write them all: capturing finds which are missing)
            try:
                self._check_out(stage, answer.outs)
            except (transfer.TransferError, OSError) as exc:
                return failed(f"pivotbuild: the stage's outputs could not be fetched from the remote: {exc}"), None
        return stagework.capture(
            stage, answer.result, outputs=self.outputs, known=job.known, store=self.store, label=label, put=put
        )

    def _found_on_remote(self, job: Job) -> Captured | None:
        """--no-checkout: the outputs recorded for exactly the job's inputs, if
        all are on the remote (an earlier --no-checkout build left them
        there), for the stage to be restored with instead of run (its stale
        outputs here removed, as a run removes them); else None."""
        assert job.recorded is not None
        try:
            found = transfer.holds(self.remote, job.recorded)
        except (transfer.TransferError, OSError):  # (cannot ask: run it, which says what is wrong)
            return None
        if not found or stagework.prepare_outputs(self.root, job.stage, dirs=False):
            return None
        return self._leave(job.recorded)

    def _leave(self, outs: tuple[FileRecord, ...]) -> Captured:
        """Outputs left on the remote (--no-checkout), as captured: known by
        their records to the stages reading them, sent as they are."""
        with self._lock:
            self.elsewhere.update((rec.path, rec) for rec in outs)
            self.on_remote.update(rec.hash for rec in outs)
        return Captured(outs, (), (), stored=False)

    def _submit(self, job: Job, task: Task) -> TaskResult | None:
        """One attempt of `task` on the cluster; None if it was cancelled."""
        with self._lock:
            if self.cancelled.is_set() or job in self._stopped:
                return None
            key = f"pivot-{job.label}-{uuid.uuid4().hex}"
            self.streams.expect(key, job.label)
            future = self.running[job] = self.client.submit(run_task, task, key=key, pure=False)
        try:
            answer: TaskResult = self._wait(future)
            self.streams.done(key, answer.run, answer.lines, answer.printed)  # (the lines its events did not bring)
            return answer
        except CancelledError:
            if self.cancelled.is_set() or job in self._stopped:
                return None
            return TaskResult(failed("pivotbuild: the Dask cluster dropped the stage (its scheduler went away?)"))
        except Exception as exc:  # the cluster gave up on it (a task that killed its workers), or went away
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return TaskResult(failed(f"pivotbuild: the Dask cluster could not run the stage: {text}"))
        finally:
            self.streams.forget(key)
            with self._lock:
                self.running.pop(job, None)

    def _wait(self, future: Any) -> TaskResult:
        """The task's result; if the cluster has had no worker, or its scheduler
        has not answered, for `_STRANDED_S`, a failure saying so (Dask itself
        would wait for ever: a task waits for a worker to come)."""
        stranded_since: float | None = None
        patience = _patience()
        while True:
            try:
                answer: TaskResult = future.result(timeout=_POLL_S)
                return answer
            except TimeoutError:
                pass
            if self.cancelled.is_set():
                future.cancel()
            problem = self._cluster_problem()
            if problem is None:
                stranded_since = None
                continue
            now = time.monotonic()
            stranded_since = stranded_since or now
            if now - stranded_since >= patience:
                future.cancel()
                return TaskResult(failed(f"pivotbuild: {problem} for {patience:g}s; the stage did not run"))

    def _cluster_problem(self) -> str | None:
        """Why the cluster cannot run a task now, or None: asked of the
        scheduler at most once per `_POLL_S` for all the stages waiting (each
        waits in a thread of its own: `-j 400` must not mean 200 questions a second)."""
        with self._lock:
            asked_at, problem = self._cluster_seen
            if time.monotonic() - asked_at < _POLL_S:
                return problem
        try:
            # (sent by value: the scheduler need not have pivotbuild; an answer proves it lives)
            info = self.client.run_on_scheduler(
                lambda dask_scheduler: len(dask_scheduler.workers), callback_timeout=_POLL_S
            )
        except Exception:  # (a timeout, a closed connection: it does not answer)
            problem = "the Dask scheduler has not answered"
        else:
            problem = None if info else "the Dask cluster has had no worker"
        with self._lock:
            self._cluster_seen = (time.monotonic(), problem)
        return problem

    def _send_inputs(self, snap: Snapshot, *, extra: tuple[FileRecord, ...] = ()) -> tuple[FileRecord, ...]:
        """The stage's input files and directories, and `extra` ones, each made
        sure to be on the remote: stored in the cache, then pushed (unless sent before)."""
        inputs: list[FileRecord] = []
        for rec in snap.deps:
            for one in rec.matches if rec.kind == GLOB else (rec,):
                with self._lock:
                    left = self.elsewhere.get(one.path)
                if left is not None and left.hash == one.hash:  # (not here: on the remote, as its worker stored it)
                    inputs.append(left)
                elif one.kind == FILE:
                    mode = os.stat(self.root / one.path).st_mode
                    inputs.append(replace(one, executable=bool(mode & 0o111)))
                elif one.kind == DIR:
                    inputs.append(one)
        inputs.extend(extra)
        with self._lock:
            fresh = [rec for rec in inputs if rec.hash not in self.on_remote]
        # (Another stage may be sending the same object meanwhile: each sends it
        # unless the remote has it, and each is submitted once its own send is done.)
        for rec in fresh:
            path = self.root / rec.path
            ok = (
                self.cache.store_dir(path, _manifest(path), rec.hash)
                if rec.kind == DIR
                else self.cache.store_file(path, rec.hash)
            )
            if not ok:
                raise transfer.TransferError(f"{rec.path} changed while the build ran; build again")
        # jobs=1: the stages in flight are the parallelism (a pool each: 4 threads per stage at -j 400)
        report = transfer.push(self.cache, self.remote, fresh, (), jobs=1)
        if report.problems:
            raise transfer.TransferError(report.problems[0])
        with self._lock:
            self.on_remote.update(rec.hash for rec in fresh)
        return tuple(inputs)

    def _check_out(self, stage: Stage, outs: tuple[FileRecord, ...]) -> None:
        """Fetch the outputs a worker stored into the cache, and check them out
        into the project (copies: capturing then stores them as it would a
        stage's own files)."""
        report = transfer.fetch(self.cache, self.remote, outs, (), index=False, jobs=1)  # (as push, above)
        if report.problems:
            raise transfer.TransferError(report.problems[0])
        for rec in outs:
            dest = self.root / rec.path
            if rec.kind == DIR:
                self.cache.checkout_dir(rec.hash, dest, Mode.COPY)
            else:
                self.cache.checkout_file(rec.hash, dest, Mode.COPY, rec.executable)
        with self._lock:
            self.on_remote.update(rec.hash for rec in outs)


def _carried(root: Path, stage: Stage, snap: Snapshot) -> tuple[PyCall | None, tuple[FileRecord, ...]]:
    """What `stage` needs on a worker beside its deps: a `py:` stage's call,
    and the project's Python files its code may import (pysource.imported_files);
    the `persist` and `incremental` outputs as the project has them now (an
    incremental one restored to its recorded version: Recorder.job), for the
    stage to find in place; the files its `params:` come from (a stage may
    read its params file itself, as `py:` stages and scripts do).  Each as an
    input's record, hashed now."""
    call, paths = None, [out.path for out in stage.outs if out.persist or out.incremental]
    paths += [param.file for param in stage.params]
    if stage.py is not None:
        call = py_call(stage, root, snap.expanded_deps)
        with contextlib.suppress(SourceError):  # (then the worker's import says what is wrong)
            paths += [os.path.relpath(path, root) for path in imported_files(stage.py, call.pipeline_dir, root)]
    extra: list[FileRecord] = []
    for rel in dict.fromkeys(paths):
        path = root / rel
        if _outside(rel) or not path.exists():  # (an output not made yet: nothing to carry)
            continue
        if path.is_dir():
            extra.append(FileRecord(rel, DIR, hash_bytes(manifest_bytes(_manifest(path)))))
        else:
            extra.append(FileRecord(rel, FILE, hash_file(path), executable=bool(path.stat().st_mode & 0o111)))
    return call, tuple(extra)


def _manifest(path: Path) -> list[ManifestEntry]:
    """The manifest of the directory `path`, as the build hashes one."""
    return [
        ManifestEntry(rel, kind, link_hash(path / rel) if kind == ENTRY_LINK else hash_file(path / rel))
        for rel, kind, _ in walk_dir(path)
    ]
