"""Admission and the job server: which ready stage may start now.

A stage starts when the job server hands it its tokens (`jobs:`, capped at
`-j`), none of its mutex groups is held (`*` means it runs alone), the memory
it reserves (`mem:`) is available and, with `--mem-limit`, within what all
the running stages may reserve, and the load average is under `-l`.  With
nothing running, memory and load never hold a stage back, so a build cannot
stall; but a stage that reserves more memory than the machine has, or than
`--mem-limit`, fails instead of starting (see `unfit`).  Which ready stage
is offered first is the scheduler's (scheduler.py: the longest remaining path).

The job server is the engine's: a pool of `-j` tokens the stages share
(sharedpool.py), or make's when pivotbuild runs under make (makejobs.py), or
a plain count (`TokenPool`: a plan, which runs nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pivotbuild.model import Stage, StageId
from pivotbuild.structs import Protocol, field, struct


class JobServer(Protocol):
    """Hands out job tokens (see the module's docstring for which)."""

    capacity: int

    def try_acquire(self, n: int) -> bool: ...
    def release(self, n: int) -> None: ...
    def available(self) -> int:
        """Tokens free now (a lower bound is fine: 0 only when none can be had)."""

    def close(self) -> None:
        """The build is over: every token read is given back."""

    # Optional: `settle()`, called as the build loop is about to wait and as
    # it ends: tokens its ended stages left for a next start that did not
    # come go back to the pool (makejobs.py keeps them between stages).


class TokenPool:
    """A job server of our own with `capacity` tokens (`-j`)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity

    def try_acquire(self, n: int) -> bool:
        if n > self.free:
            return False
        self.free -= n
        return True

    def release(self, n: int) -> None:
        self.free = min(self.capacity, self.free + n)

    def available(self) -> int:
        return self.free

    def close(self) -> None:
        pass


def _available_memory() -> int:
    import psutil  # only stages that reserve memory need it: not imported by every build

    return int(psutil.virtual_memory().available)


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def _load_average() -> float:
    return os.getloadavg()[0]


@struct(eq=False)  # a stateful gate, never compared
class Admission:
    """Whether a stage may start now: job-server tokens, its `mutex` groups, its `mem`, the load limit."""

    jobserver: JobServer
    load_limit: float | None = None
    mem_limit: int | None = None  # --mem-limit: what the running stages may reserve in all
    available_memory: Callable[[], int] = _available_memory
    load_average: Callable[[], float] = _load_average
    total_memory: Callable[[], int] = _total_memory
    running: dict[StageId, Stage] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict, repr=False)  # mutex group -> running stages holding it
    _alone: int = field(default=0, repr=False)  # running stages with mutex `*`
    _reserved: int = field(default=0, repr=False)  # memory the running stages reserve

    def tokens(self, stage: Stage) -> int:
        jobs = stage.jobs
        return 1 if jobs == 1 else max(1, min(jobs, self.jobserver.capacity))

    def unfit(self, stage: Stage) -> str:
        """Why `stage` can never run on this machine, or "" if it can."""
        if not stage.mem:
            return ""
        limit = self.mem_limit is not None and stage.mem > self.mem_limit
        if not limit and stage.mem <= (total := self.total_memory()):
            return ""
        from pivotbuild.pivotfile.units import approx_size, format_size  # its regexes: only for this message

        if limit:
            assert self.mem_limit is not None
            return (
                f"mem: {format_size(stage.mem)} exceeds --mem-limit {format_size(self.mem_limit)};"
                " raise the limit or reserve less"
            )
        machine = approx_size(total)
        return f"mem: {format_size(stage.mem)} exceeds this machine's total memory of {machine}; reserve at most that"

    def try_start(self, stage: Stage) -> bool:
        """Reserve what `stage` needs and return True, or change nothing and return False."""
        busy = bool(self.running)
        if self._alone:
            return False
        mutex = stage.mutex
        if mutex and (("*" in mutex and busy) or any(self._held.get(g) for g in mutex)):
            return False
        if busy and stage.mem:
            if self.mem_limit is not None and self._reserved + stage.mem > self.mem_limit:
                return False
            if self.available_memory() - self._reserved < stage.mem:
                return False
        if busy and self.load_limit is not None and self.load_average() >= self.load_limit:
            return False
        if not self.jobserver.try_acquire(self.tokens(stage)):
            return False
        self.running[stage.id] = stage
        self._hold(stage, 1)
        return True

    def finished(self, stage: Stage) -> None:
        if self.running.pop(stage.id, None) is not None:
            self.jobserver.release(self.tokens(stage))
            self._hold(stage, -1)

    def _hold(self, stage: Stage, n: int) -> None:
        """Count `stage`'s mutex groups and memory in (n=1) or out (n=-1): kept
        as running totals, so that admitting a stage costs the same however
        many run (a plan admits every stage at once)."""
        if not stage.mutex and not stage.mem:
            return  # (most stages: nothing to count)
        for g in stage.mutex:
            self._held[g] = self._held.get(g, 0) + n
        if "*" in stage.mutex:
            self._alone += n
        self._reserved += n * stage.mem

    @property
    def saturated(self) -> bool:
        """No stage can start until one finishes: every job token is taken."""
        return self.jobserver.available() == 0

    @property
    def waits_on_resources(self) -> bool:
        """True if a start may become possible without any stage finishing
        (load, memory, or tokens coming back to make's pool from its other jobs)."""
        return self.load_limit is not None or self._reserved > 0 or self.external

    @property
    def external(self) -> bool:
        """The tokens come from make's jobserver (build/makejobs.py)."""
        return getattr(self.jobserver, "external", False)
