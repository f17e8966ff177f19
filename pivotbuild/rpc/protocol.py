"""JSON-RPC 2.0 for the agent server: one request line in, its reply line out.

A line is one JSON value in UTF-8 (its `\\n` optional): a request object, or
a batch (a non-empty array of them, answered by an array of the replies to
its requests, in order, or by nothing if it held only notifications).
`params` is an object, by name, or absent; by position (an array) is
refused with -32602, so that no client depends on an order of parameters.
A blank line is ignored.  See docs/rpc.md.

`handle_line` never raises: whatever an agent method raises becomes an
error reply (-32603 for anything but `RpcError`), and nothing is printed.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

from pivotbuild.rpc.agent import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    Agent,
    RpcError,
)

_NOTHING: Any = object()  # a request without "id": a notification, never answered

# What each parameter accepts, by the word its -32602 message uses.
_Check = tuple[str, Callable[[Any], bool]]
_STAGE: _Check = ("a string", lambda v: isinstance(v, str))
_STAGES: _Check = (
    "a list of strings or null",
    lambda v: v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
)
_BOOL: _Check = ("true or false", lambda v: isinstance(v, bool))
_CURSOR: _Check = ("a non-negative integer", lambda v: type(v) is int and v >= 0)


class _Method:
    """One RPC method: its parameters (name → check, required?) and the call."""

    def __init__(self, params: dict[str, tuple[_Check, bool]], call: Callable[[Agent, dict[str, Any]], Any]) -> None:
        self.params = params
        self.call = call


METHODS: dict[str, _Method] = {
    "stages": _Method({}, lambda a, p: a.stages()),
    "status": _Method({}, lambda a, p: a.status()),
    "run": _Method(
        {"stages": (_STAGES, False), "force": (_BOOL, False)},
        lambda a, p: a.run(p.get("stages"), p.get("force", False)),
    ),
    "cancel": _Method({}, lambda a, p: a.cancel()),
    "events_since": _Method({"cursor": (_CURSOR, True)}, lambda a, p: a.events_since(p["cursor"])),
    "explain": _Method({"stage": (_STAGE, True)}, lambda a, p: a.explain(p["stage"])),
}


def handle_line(agent: Agent, line: bytes) -> bytes | None:
    """The reply line (`\\n`-terminated) to one request line, or None when
    nothing is to be answered (notifications only, or a blank line)."""
    if not line.strip():
        return None
    reply: str | None
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reply = _error(None, PARSE_ERROR, f"parse error: not a JSON value in UTF-8 ({_reason(exc)})")
    else:
        if isinstance(message, list):
            if not message:
                reply = _error(None, INVALID_REQUEST, "invalid request: an empty batch")
            else:
                replies = [r for r in (_handle(agent, m) for m in message) if r is not None]
                reply = f"[{','.join(replies)}]" if replies else None
        else:
            reply = _handle(agent, message)
    return None if reply is None else reply.encode("utf-8") + b"\n"


def _handle(agent: Agent, message: Any) -> str | None:
    """The reply to one request, in JSON; None for a notification."""
    if not isinstance(message, dict):
        return _error(None, INVALID_REQUEST, "invalid request: a request is a JSON object")
    rid = message.get("id", _NOTHING)
    if not _valid_id(rid):
        return _error(None, INVALID_REQUEST, "invalid request: 'id' must be a string, a number or null")
    problem = _shape_problem(message)
    if problem:
        return _error(None if rid is _NOTHING else rid, INVALID_REQUEST, f"invalid request: {problem}")
    if rid is _NOTHING:  # a notification: done, and never answered, even with an error
        with contextlib.suppress(Exception):  # an agent's bug included: nobody to tell; the server goes on
            _dispatch(agent, message["method"], message.get("params", _NOTHING))
        return None
    try:
        result = _dispatch(agent, message["method"], message.get("params", _NOTHING))
        # Encoded here: a result that is not JSON is the agent's bug (-32603), not a dead connection.
        return _encode({"jsonrpc": "2.0", "id": rid, "result": result})
    except RpcError as exc:
        return _error(rid, exc.code, exc.message, exc.data)
    except Exception as exc:  # an agent's bug must not take the server down
        return _error(rid, INTERNAL_ERROR, "internal error", {"exception": f"{type(exc).__name__}: {exc}"})


def _valid_id(rid: Any) -> bool:
    """Absent, null, a string, or a finite number (JSON's `true` is no number)."""
    if rid is _NOTHING or rid is None or (isinstance(rid, (str, int)) and not isinstance(rid, bool)):
        return True
    return isinstance(rid, float) and math.isfinite(rid)


def _shape_problem(message: dict[str, Any]) -> str:
    """What makes `message` no JSON-RPC 2.0 request ("" if nothing)."""
    if message.get("jsonrpc") != "2.0":
        return "'jsonrpc' must be \"2.0\""
    if not isinstance(message.get("method"), str):
        return "'method' must be a string"
    if "params" in message and not isinstance(message["params"], (dict, list)):
        return "'params' must be an object (or absent)"
    return ""


def _dispatch(agent: Agent, name: str, params: Any) -> Any:
    method = METHODS.get(name)
    if method is None:
        raise RpcError(METHOD_NOT_FOUND, f"unknown method {name!r}; the methods are: {', '.join(sorted(METHODS))}")
    if params is _NOTHING:
        params = {}
    if isinstance(params, list):
        raise RpcError(INVALID_PARAMS, f"{name}: params by position are not supported; pass an object")
    for key in params:
        if key not in method.params:
            takes = f"takes: {', '.join(method.params)}" if method.params else "takes no params"
            raise RpcError(INVALID_PARAMS, f"{name}: unexpected param {key!r} ({name} {takes})")
    for key, ((wanted, ok), required) in method.params.items():
        if key not in params:
            if required:
                raise RpcError(INVALID_PARAMS, f"{name}: missing param {key!r} ({wanted})")
        elif not ok(params[key]):
            raise RpcError(INVALID_PARAMS, f"{name}: param {key!r} must be {wanted}, not {_shown(params[key])}")
    return method.call(agent, params)


def error_line(code: int, message: str) -> bytes:
    """A reply line with this error, to no request in particular (id null)."""
    return _error(None, code, message).encode("utf-8") + b"\n"


def _error(rid: Any, code: int, message: str, data: Any = None) -> str:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    try:
        return _encode({"jsonrpc": "2.0", "id": rid, "error": error})
    except (TypeError, ValueError):  # an RpcError's data that is not JSON: the error without it
        del error["data"]
        return _encode({"jsonrpc": "2.0", "id": rid, "error": error})


def _encode(reply: dict[str, Any]) -> str:
    # ASCII (non-ASCII escaped): a string with a lone surrogate is still sent; no NaN, which JSON lacks.
    return json.dumps(reply, separators=(",", ":"), allow_nan=False)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
