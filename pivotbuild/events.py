"""Events: every state change of a build, for reporters to render.

The engine emits these and nothing else; the plain, live and JSON outputs are
views of the same stream.  `to_json()` gives the `--json` schema of CLI.md.

Events are messages, never compared (`eq=False`: equal only to themselves).
"""

from __future__ import annotations

from enum import Enum

from pivotbuild.structs import Protocol, struct

TYPE_CHECKING = False  # (not typing's: a build does not import typing)
if TYPE_CHECKING:
    from typing import Any


class Status(Enum):
    """How a stage ended (the `status` field of `stage_finished`)."""

    RAN = "ran"
    SKIPPED = "skipped"  # up to date
    RESTORED = "restored"
    FAILED = "failed"
    BLOCKED = "blocked"  # an upstream stage failed
    CANCELLED = "cancelled"

    # Hashed by identity, in C, as a member is only ever equal to itself (Enum's
    # own hashes the name in Python: the scheduler's tally of a 1,000-stage
    # build called it 1,000 times, and each stage's status a few more).
    __hash__ = object.__hash__


class State(Enum):
    PENDING = "pending"
    BLOCKED = "blocked"
    READY = "ready"
    PREPARING = "preparing"
    RUNNING = "running"
    DONE = "done"


@struct(frozen=True, slots=True, eq=False)
class BuildStarted:
    """The build begins: `stages` to consider, run `jobs` at a time."""

    stages: int
    jobs: int

    def to_json(self) -> dict[str, Any]:
        return {"event": "build_started", "schema": 1, "stages": self.stages, "jobs": self.jobs}


@struct(frozen=True, slots=True, eq=False)
class StageState:
    """A stage moved to another scheduling state (pending, ready, running...)."""

    stage: str
    state: State
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"event": "stage_state", "stage": self.stage, "state": self.state.value, "reason": self.reason}


@struct(frozen=True, slots=True, eq=False)
class StageStarted:
    """A stage's command started (again, with `attempt` > 1, on a retry)."""

    stage: str
    index: int  # k of [k/N]: the how-many-th stage to start running
    total: int  # N: stages that will run, as far as known now
    reason: str
    attempt: int = 1
    expected_s: float | None = None  # its last run time, if known

    def to_json(self) -> dict[str, Any]:
        return {"event": "stage_started", "stage": self.stage, "reason": self.reason, "attempt": self.attempt}


@struct(frozen=True, slots=True, eq=False)
class Log:
    """One line a running stage wrote."""

    stage: str
    stream: str  # "stdout" or "stderr"
    line: str

    def to_json(self) -> dict[str, Any]:
        return {"event": "log", "stage": self.stage, "stream": self.stream, "line": self.line}


@struct(frozen=True, slots=True, eq=False)
class StageFinished:
    """A stage is done with, however it ended."""

    stage: str
    status: Status
    reason: str
    duration_s: float
    detail: str = ""  # failures: "exit status 2", "killed by SIGKILL", "timed out after 30s"
    tail: tuple[str, ...] = ()  # failures: the last lines of output

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "event": "stage_finished",
            "stage": self.stage,
            "status": self.status.value,
            "reason": self.reason,
            "duration_s": round(self.duration_s, 3),
        }
        if self.detail:
            data["detail"] = self.detail
        return data


@struct(frozen=True, slots=True, eq=False)
class Decided:
    """A dry run's verdict on one stage (`-n`): would it run, and why.  (Its
    JSON name, "plan", is the contract's; the compiled plan is state/plan.py.)"""

    stage: str
    will_run: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"event": "plan", "stage": self.stage, "will_run": self.will_run, "reason": self.reason}


@struct(frozen=True, slots=True, eq=False)
class Message:
    """A line for the user that belongs to no stage (waiting for a lock, warnings)."""

    text: str
    level: str = "info"  # "info", "warning", "error", or "located" (a Pivotfile's located errors, shown as they are)

    def to_json(self) -> dict[str, Any]:
        return {"event": "message", "level": self.level, "text": self.text}


@struct(frozen=True, slots=True, eq=False)
class BuildFinished:
    """The build is over: how many stages ended which way."""

    ran: int
    skipped: int
    restored: int
    failed: int
    blocked: int
    cancelled: int
    duration_s: float
    interrupted: bool = False
    files_read: int = 0  # files whose contents were read to hash them (0 on a no-op)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "build_finished",
            "files_read": self.files_read,
            "ran": self.ran,
            "skipped": self.skipped,
            "restored": self.restored,
            "failed": self.failed,
            "blocked": self.blocked,
            "cancelled": self.cancelled,
            "duration_s": round(self.duration_s, 3),
        }


@struct(frozen=True, slots=True, eq=False)
class Watching:
    """Watch mode waits for changes: `files` paths watched (deps, glob
    directories, Pivotfiles, params files), after the build `last` (None if
    it did not get to run: a Pivotfile error, a missing input)."""

    files: int
    last: BuildFinished | None = None
    at: float = 0.0  # when the last build ended (time.time())

    def to_json(self) -> dict[str, Any]:
        return {"event": "watching", "files": self.files}


Event = BuildStarted | StageState | StageStarted | Log | StageFinished | Decided | Message | BuildFinished | Watching


class Reporter(Protocol):
    """Takes a build's events.  A reporter that sets `wants_states = True` is
    also sent every StageState change; the others are spared building them.
    One that sets `wants_skipped = False` may not be sent the StageFinished
    of stages up to date before the build began (a build of 10,000 stages
    that reruns 15 need not build 9,985 events nobody shows): the
    BuildFinished still counts them."""

    def handle(self, event: Event) -> None: ...
    def close(self) -> None: ...
