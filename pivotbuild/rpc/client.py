"""Calling the agent server: one request, its result (what `pivotbuild rpc` does).

Import-light (socket and json): a client is a short command.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from pivotbuild.errors import EXIT_FAILED, PivotError
from pivotbuild.rpc.address import at_path


class NoAgentServer(PivotError):
    """Nothing listens on the project's agent socket."""

    def __init__(self) -> None:
        super().__init__("no agent server is running for this project (start one with 'pivotbuild -w --serve')")


class AgentCallError(PivotError):
    """The call failed: the server answered with a JSON-RPC error (`code` set), or did not answer."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


def call(path: Path, method: str, params: dict[str, Any] | None, timeout: float) -> Any:
    """The result of `method(params)` (no params if None) from the server on
    the socket at `path`, within `timeout` seconds.  Raises NoAgentServer,
    AgentCallError, or PivotError if the socket cannot be reached."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        request["params"] = params
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            at_path(path, sock.connect)
        except (FileNotFoundError, ConnectionRefusedError):  # no socket file, or one a killed server left
            raise NoAgentServer() from None
        except TimeoutError:
            raise _no_answer(timeout) from None
        except OSError as exc:
            raise PivotError(f"cannot connect to the agent server at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(json.dumps(request).encode("utf-8") + b"\n")
            line = _read_line(sock, deadline)
        except TimeoutError:
            raise _no_answer(timeout) from None
        except OSError as exc:
            raise AgentCallError(f"the agent server closed the connection ({exc.strerror or exc})") from None
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or ("result" not in reply and not isinstance(reply.get("error"), dict)):
        text = line.decode("utf-8", "replace").strip()
        raise AgentCallError(f"the agent server answered with no JSON-RPC reply: {text[:200]!r}")
    if "result" in reply:
        return reply["result"]
    error = reply["error"]
    raise AgentCallError(
        f"agent error {error.get('code')}: {error.get('message')}", error.get("code"), error.get("data")
    )


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        chunk = sock.recv(1 << 16)
        if not chunk:
            if chunks:
                return b"".join(chunks)
            raise AgentCallError("the agent server closed the connection without answering")
        chunks.append(chunk)
        if b"\n" in chunk:
            return b"".join(chunks).partition(b"\n")[0]


def _no_answer(timeout: float) -> AgentCallError:
    return AgentCallError(f"the agent server did not answer within {timeout:g}s; try again, or a longer --timeout")
