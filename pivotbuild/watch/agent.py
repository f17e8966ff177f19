"""The agent server's methods (CLI.md, "The agent server"; rpc/agent.py's
`Agent`), answered from watch mode: the stages and their states from the
event log, builds and cancels through the watch loop, and `explain` from the
engine's decider between builds (during one, from what the build decided).
"""

from __future__ import annotations

from typing import Any

from pivotbuild.build.selection import selected
from pivotbuild.errors import PivotError
from pivotbuild.rpc.agent import BUSY, INVALID_PARAMS, RpcError
from pivotbuild.structs import replace
from pivotbuild.watch.eventlog import EventLog
from pivotbuild.watch.loop import WatchLoop

# How long `explain` waits for the loop to take its question (between
# builds: a build that started just after it looked may be waited for).
_ANSWER_S = 30.0

# The states a stage is in while its build will run it (or runs it).
_WILL_RUN = frozenset(("ready", "preparing", "running", "ran"))


class WatchAgent:
    def __init__(self, loop: WatchLoop, log: EventLog) -> None:
        self.loop = loop
        self.log = log

    def stages(self) -> dict[str, Any]:
        graph = self.loop.graph()
        rows = []
        for sid in graph.order():
            name = graph.label(sid)
            state, reason = self.log.state(name)
            rows.append({"name": name, "state": state, "reason": reason})
        return {"stages": rows}

    def status(self) -> dict[str, Any]:
        return {"state": "building" if self.loop.building else "idle", "build": self.log.counts()}

    def run(self, stages: list[str] | None, force: bool) -> dict[str, Any]:
        if stages is not None:
            self._check(stages)
        self.loop.request_build(stages, force)
        return {"accepted": True}

    def cancel(self) -> dict[str, Any]:
        return {"cancelled": self.loop.cancel()}

    def events_since(self, cursor: int) -> dict[str, Any]:
        return self.log.since(cursor)

    def explain(self, stage: str) -> dict[str, Any]:
        labels = self._check([stage])
        if len(labels) != 1:
            raise RpcError(INVALID_PARAMS, f"'{stage}' names {len(labels)} stages; explain takes one")
        label = labels[0]
        if self.loop.building:
            now = self.log.decided_now(label)
            if now is not None and now[0] not in ("pending", "blocked"):
                state, reason = now
                return {"will_run": state in _WILL_RUN, "reason": reason if state in _WILL_RUN else None}
        options = replace(self.loop.options, targets=(label,))

        def decide() -> dict[str, Any]:
            for name, decision in self.loop.engine.status(options):
                if name == label:
                    return {"will_run": decision.run, "reason": decision.reason if decision.run else None}
            raise RpcError(INVALID_PARAMS, f"unknown stage '{stage}'")  # pragma: no cover - status lists it

        try:
            result: dict[str, Any] = self.loop.between_builds(decide, _ANSWER_S)
        except TimeoutError:
            raise RpcError(
                BUSY, f"a build is running and has not decided '{label}' yet; ask again when it ends"
            ) from None
        return result

    def _check(self, names: list[str]) -> list[str]:
        """The labels of the stages `names` name; RpcError for one that names none."""
        project, graph = self.loop.engine.current()
        labels: list[str] = []
        for name in names:
            try:
                chosen = selected(project, graph, [name])
            except PivotError as exc:
                raise RpcError(INVALID_PARAMS, exc.message) from exc
            labels.extend(graph.label(sid) for sid in chosen)
        return labels
