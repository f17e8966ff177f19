"""Stage states and the ready queue of one build: which stages wait on which,
which are ready to be decided, the order ready stages start in (the longest
remaining path first), and what a failure blocks.

The scheduler knows nothing of processes, events or files: the build loop
(run.py) tells it what finished, and asks it what comes next.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from pivotbuild.events import Status
from pivotbuild.model import StageId

# The statuses that let the stages waiting on a stage go ahead.
_RELEASING = frozenset((Status.RAN, Status.SKIPPED, Status.RESTORED))
# The statuses of an upstream stage that rewrote (or, in a plan, will rewrite) outputs.
_WROTE = frozenset((Status.RAN, Status.RESTORED))


class Scheduler:
    """The states of the stages of one build.

    `closure` is every stage of the build, in build order; `after[s]` the
    stages of the build `s` waits on (the graph's edges, or for `run` the
    order given); `expected` past durations, for the critical path.  With
    `block_on_failure` false, a failure does not block what follows it.
    """

    def __init__(
        self,
        closure: list[StageId],
        after: Mapping[StageId, list[StageId]],
        expected: Mapping[StageId, float],
        *,
        block_on_failure: bool = True,
    ) -> None:
        self.closure = closure
        self.after = after
        self.next: dict[StageId, list[StageId]] = {s: [] for s in closure}
        for s in closure:
            for u in after[s]:
                self.next[u].append(s)
        self.block_on_failure = block_on_failure
        self.waiting = {s: len(after[s]) for s in closure}
        self.ready: list[StageId] = [s for s in closure if self.waiting[s] == 0]
        self.status: dict[StageId, Status] = {}
        self.priority = critical_path(closure, self.next.__getitem__, expected)

    def pop_ready(self) -> StageId | None:
        """The next stage whose upstream stages are all out of the way, in the order they became so."""
        return self.ready.pop(0) if self.ready else None

    def upstream_wrote(self, sid: StageId) -> StageId | None:
        """The first stage `sid` waits on that ran or was restored, if any."""
        status = self.status
        for u in self.after[sid]:
            if status.get(u) in _WROTE:
                return u
        return None

    def key(self, sid: StageId) -> float:
        """Where `sid` goes among the stages ready to start: the one heading
        the longest remaining path first (ties keep the order they were
        decided in, by the caller's count)."""
        return -self.priority[sid]

    def first_readied(self, sid: StageId) -> float:
        """The `key` of the first stage `sid`'s end makes ready (infinity if
        none): a stage waiting with a key above it would go after that one."""
        status, waiting, priority = self.status, self.waiting, self.priority
        first = math.inf
        for d in self.next[sid]:  # (a loop, not a generator: this runs as each stage ends)
            if waiting[d] == 1 and d not in status and -priority[d] < first:
                first = -priority[d]
        return first

    def finish(self, sid: StageId, status: Status) -> None:
        """`sid` is done; if it succeeded, the stages waiting only for it become ready."""
        self.status[sid] = status
        if status in _RELEASING:
            self.release(sid)

    def settled(self, sids: Iterable[StageId]) -> None:
        """Stages of the build besides this scheduler's, up to date before it
        began (see BuildRun): counted skipped, waited on by none of its stages."""
        self.status.update(dict.fromkeys(sids, Status.SKIPPED))

    def fail(self, sid: StageId) -> list[StageId]:
        """`sid` failed: the stages it blocks (not yet finished, in build order),
        which the caller finishes as blocked; none without `block_on_failure`,
        when the stages waiting only for it become ready instead."""
        self.status[sid] = Status.FAILED
        if not self.block_on_failure:
            self.release(sid)
            return []
        return [d for d in self.descendants(sid) if d not in self.status]

    def release(self, sid: StageId) -> None:
        """`sid` is out of the way: stages waiting only for it become ready."""
        for down in self.next[sid]:
            if down not in self.status:
                self.waiting[down] -= 1
                if self.waiting[down] == 0:
                    self.ready.append(down)

    def descendants(self, sid: StageId) -> list[StageId]:
        """Every stage of this build that waits on `sid`, directly or not, in build order."""
        seen: set[StageId] = set()
        stack = list(self.next[sid])
        while stack:
            d = stack.pop()
            if d not in seen:
                seen.add(d)
                stack.extend(self.next[d])
        return [s for s in self.closure if s in seen]

    def unfinished(self) -> list[StageId]:
        """The stages without a status yet, in build order."""
        return [s for s in self.closure if s not in self.status]

    def counts(self) -> dict[Status, int]:
        return dict.fromkeys(Status, 0) | Counter(self.status.values())


def critical_path(
    order: list[StageId], downstream: Callable[[StageId], Iterable[StageId]], durations: Mapping[StageId, float]
) -> dict[StageId, float]:
    """For each stage, the length of the longest path from it to the end of the
    build: its own duration (past run time, else 1) plus the longest of its
    dependents'.  `order` must be topological."""
    keep = set(order)
    length: dict[StageId, float] = {}
    for sid in reversed(order):
        after = [length[d] for d in downstream(sid) if d in keep]
        length[sid] = durations.get(sid, 1.0) + max(after, default=0.0)
    return length
