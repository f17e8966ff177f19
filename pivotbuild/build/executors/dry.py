"""The dry executor: a plan (-n, -q, status) is the build loop with an
executor that runs nothing, as ninja's dry run is its build loop with a
command runner that runs nothing.  Each admitted stage "succeeds" at once, so
the stages after it decide as they would once it had run: "upstream X will
run" (see Decider)."""

from __future__ import annotations

from pivotbuild.build.executors.base import Done, Inbox, Job
from pivotbuild.build.executors.runner import RunResult

_SUCCEEDED = RunResult(0, None, False, False, (), 0.0)


class DryExecutor:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def start(self, job: Job) -> None:
        self.inbox.done(Done(job, _SUCCEEDED))

    def cancel(self) -> None:
        pass  # nothing runs, so nothing to stop

    def cancel_job(self, job: Job) -> None:
        pass

    def close(self) -> None:
        pass
