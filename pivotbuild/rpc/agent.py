"""What the agent server serves: the `Agent` protocol (one method per RPC
method of CLI.md), implemented by watch mode (watch/agent.py), and the error
an agent method raises to answer with a JSON-RPC error.

The server validates the shape of each request (JSON, `jsonrpc`, `method`,
`params` types) before calling a method; a method raises `RpcError` only for
what the server cannot know (an unknown stage name).  Methods are called
from the server's threads, any number at once: an agent is thread-safe, and
never blocks on a build (a slow client must never stall one, nor a build a
client for long).
"""

from __future__ import annotations

from typing import Any, Protocol

# JSON-RPC 2.0's error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# A server error (JSON-RPC leaves -32000 to -32099 to servers): the answer
# must wait for the running build; ask again.
BUSY = -32000


class RpcError(Exception):
    """Answer the request with this JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Agent(Protocol):
    def stages(self) -> dict[str, Any]:
        """`{"stages": [{"name": NAME, "state": STATE, "reason": TEXT|null}, ...]}`."""
        ...

    def status(self) -> dict[str, Any]:
        """`{"state": "idle"|"building", "build": {counts of the build running or last run}}`."""
        ...

    def run(self, stages: list[str] | None, force: bool) -> dict[str, Any]:
        """Queue a build of `stages` (None: the watched targets) after the
        current one: `{"accepted": true}`.  Raises RpcError(INVALID_PARAMS)
        naming an unknown stage."""
        ...

    def cancel(self) -> dict[str, Any]:
        """Kill the running build's stages, as Ctrl-C would (watch mode goes
        on): `{"cancelled": bool}` (False: nothing was building)."""
        ...

    def events_since(self, cursor: int) -> dict[str, Any]:
        """`{"events": [the --json events after `cursor`], "cursor": M}`;
        cursor 0 is the beginning."""
        ...

    def explain(self, stage: str) -> dict[str, Any]:
        """`{"will_run": bool, "reason": TEXT|null}` for one stage.  Raises
        RpcError(INVALID_PARAMS) naming an unknown stage."""
        ...
