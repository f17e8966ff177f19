"""The agent server (rpc/): JSON-RPC 2.0 on a real Unix socket, served to a
fake agent that records its calls; and `pivotbuild rpc` end to end against
such a server running in this process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from helpers import HANG_GUARD_S, wait_until

from pivotbuild.paths import AGENT_SOCKET
from pivotbuild.rpc.address import at_path
from pivotbuild.rpc.agent import INVALID_PARAMS, RpcError
from pivotbuild.rpc.server import MAX_LINE, AgentServer, AgentServerError

STAGES = {"prepare": (False, None), "train": (True, "dep changed: data.csv")}
EVENTS = [{"event": "build_started"}, {"event": "stage_started", "stage": "train"}]
BIG = 1_000_000  # events_since(BIG): a reply of some 4 MB, more than a socket buffers


class FakeAgent:
    """Answers from fixed data and records each call; explain("slow") waits
    for `release`, explain("boom") raises as a buggy agent would."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def stages(self) -> dict[str, Any]:
        self.calls.append(("stages",))
        rows = [{"name": n, "state": "stale" if run else "up to date", "reason": r} for n, (run, r) in STAGES.items()]
        return {"stages": rows}

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"state": "idle", "build": {"ran": 1, "skipped": 1, "failed": 0}}

    def run(self, stages: list[str] | None, force: bool) -> dict[str, Any]:
        self.calls.append(("run", stages, force))
        for name in stages or ():
            self._known(name)
        return {"accepted": True}

    def cancel(self) -> dict[str, Any]:
        self.calls.append(("cancel",))
        return {"cancelled": False}

    def events_since(self, cursor: int) -> dict[str, Any]:
        self.calls.append(("events_since", cursor))
        if cursor == BIG:
            return {"events": [{"event": "output", "line": "x" * 1000}] * 4000, "cursor": BIG}
        return {"events": EVENTS[cursor:], "cursor": len(EVENTS)}

    def explain(self, stage: str) -> dict[str, Any]:
        self.calls.append(("explain", stage))
        if stage == "slow":
            self.entered.set()
            self.release.wait(HANG_GUARD_S)
            return {"will_run": False, "reason": None}
        if stage == "boom":
            raise KeyError("a bug")
        run, reason = self._known(stage)
        return {"will_run": run, "reason": reason}

    @staticmethod
    def _known(name: str) -> tuple[bool, str | None]:
        if name not in STAGES:
            raise RpcError(INVALID_PARAMS, f"unknown stage {name!r}")
        return STAGES[name]


class Client:
    """One connection: lines out, replies in (with a guard against a hang)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(HANG_GUARD_S)
        at_path(path, self.sock.connect)
        self.reader = self.sock.makefile("rb")
        self.next_id = 0

    def send(self, message: Any) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.sock.sendall(data)

    def request(self, method: str, params: Any = None) -> None:
        self.next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def reply(self) -> Any:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"no reply line: {line!r}"
        return json.loads(line)

    def call(self, method: str, params: Any = None) -> Any:
        self.request(method, params)
        return self.reply()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    (tmp_path / ".pivot").mkdir()
    return tmp_path / ".pivot" / "agent.sock"


@pytest.fixture
def server(sock_path: Path, agent: FakeAgent) -> Iterator[AgentServer]:
    with AgentServer(sock_path, agent) as s:
        yield s


@pytest.fixture
def connect(server: AgentServer, agent: FakeAgent) -> Iterator[Callable[[], Client]]:
    """Connect a client to `server`; all are closed (a slow call released first) before it closes."""
    clients: list[Client] = []

    def new() -> Client:
        clients.append(Client(server.path))
        return clients[-1]

    yield new
    agent.release.set()
    for c in clients:
        c.close()


@pytest.fixture
def client(connect: Callable[[], Client]) -> Client:
    return connect()


def error_of(reply: dict[str, Any], code: int) -> str:
    """The error's message, once the reply is checked to be that error."""
    assert "result" not in reply, reply
    assert reply["error"]["code"] == code, reply
    return str(reply["error"]["message"])


# -- the methods -------------------------------------------------------------------------


IDLE = {"state": "idle", "build": {"ran": 1, "skipped": 1, "failed": 0}}
ROWS = [
    {"name": "prepare", "state": "up to date", "reason": None},
    {"name": "train", "state": "stale", "reason": "dep changed: data.csv"},
]


@pytest.mark.parametrize(
    ("request_", "result", "recorded"),
    [
        (("stages", None), {"stages": ROWS}, ("stages",)),
        (("status", None), IDLE, ("status",)),
        (("status", {}), IDLE, ("status",)),
        (("run", None), {"accepted": True}, ("run", None, False)),
        (("run", {"stages": ["train"], "force": True}), {"accepted": True}, ("run", ["train"], True)),
        (("run", {"stages": None}), {"accepted": True}, ("run", None, False)),
        (("cancel", None), {"cancelled": False}, ("cancel",)),
        (("events_since", {"cursor": 0}), {"events": EVENTS, "cursor": 2}, ("events_since", 0)),
        (("events_since", {"cursor": 1}), {"events": EVENTS[1:], "cursor": 2}, ("events_since", 1)),
        (("explain", {"stage": "train"}), {"will_run": True, "reason": "dep changed: data.csv"}, ("explain", "train")),
    ],
)
def test_each_method_answers_with_the_agents_result(
    client: Client, agent: FakeAgent, request_: tuple[str, Any], result: Any, recorded: tuple[Any, ...]
) -> None:
    assert client.call(*request_) == {"jsonrpc": "2.0", "id": 1, "result": result}
    assert agent.calls == [recorded]


def test_replies_on_one_connection_come_in_the_order_of_the_requests(client: Client, agent: FakeAgent) -> None:
    client.send(
        b"".join(
            json.dumps({"jsonrpc": "2.0", "id": rid, "method": m}).encode() + b"\n"
            for rid, m in (("a", "status"), (7, "cancel"), (None, "stages"))
        )
    )
    assert [client.reply()["id"] for _ in range(3)] == ["a", 7, None]
    assert agent.calls == [("status",), ("cancel",), ("stages",)]


def test_a_notification_is_carried_out_and_never_answered(client: Client, agent: FakeAgent) -> None:
    client.send({"jsonrpc": "2.0", "method": "run", "params": {"stages": ["train"]}})
    client.send({"jsonrpc": "2.0", "method": "explain", "params": {"stage": "boom"}})  # an error: not answered either
    client.send({"jsonrpc": "2.0", "method": "no_such_method"})
    assert client.call("status")["id"] == 1  # the first line back answers this request
    assert agent.calls == [("run", ["train"], False), ("explain", "boom"), ("status",)]


def test_a_batch_is_answered_by_an_array_without_its_notifications(client: Client, agent: FakeAgent) -> None:
    client.send(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "status"},
            {"jsonrpc": "2.0", "method": "cancel"},
            {"jsonrpc": "2.0", "id": 2, "method": "explain", "params": {"stage": "nope"}},
            5,
        ]
    )
    first, second, third = client.reply()
    assert first["id"] == 1 and "result" in first
    assert second["id"] == 2 and "nope" in error_of(second, -32602)
    assert third["id"] is None and "object" in error_of(third, -32600)
    client.send([{"jsonrpc": "2.0", "method": "cancel"}])  # notifications only: no reply at all
    assert client.call("stages")["id"] == 1
    assert agent.calls == [("status",), ("cancel",), ("explain", "nope"), ("cancel",), ("stages",)]


# -- the errors --------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"{not json\n", b'{"jsonrpc": "2.0", "id": 1, "method": \n', b"\xff\xfe\n"])
def test_a_line_that_is_not_json_is_a_parse_error_with_a_null_id(client: Client, agent: FakeAgent, line: bytes) -> None:
    client.send(line)
    reply = client.reply()
    assert "parse error" in error_of(reply, -32700)
    assert reply["id"] is None
    assert client.call("status")["result"]["state"] == "idle"  # the connection goes on


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("a string", "object"),
        ({"id": 1, "method": "status"}, "jsonrpc"),
        ({"jsonrpc": "1.0", "id": 1, "method": "status"}, "jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, "method"),
        ({"jsonrpc": "2.0", "id": 1}, "method"),
        ({"jsonrpc": "2.0", "id": 1, "method": "explain", "params": "train"}, "params"),
        ({"jsonrpc": "2.0", "id": 1, "method": "status", "params": None}, "params"),
        ({"jsonrpc": "2.0", "id": True, "method": "status"}, "id"),
        ({"jsonrpc": "2.0", "id": {"n": 1}, "method": "status"}, "id"),
        ([], "empty batch"),
    ],
)
def test_an_invalid_request_is_refused_naming_what_is_wrong(
    client: Client, agent: FakeAgent, message: Any, named: str
) -> None:
    client.send(message)
    assert named in error_of(client.reply(), -32600)
    assert agent.calls == []


def test_an_unknown_method_is_refused_listing_the_methods(client: Client) -> None:
    reply = client.call("restart")
    assert reply["id"] == 1
    message = error_of(reply, -32601)
    assert "'restart'" in message and "events_since" in message


@pytest.mark.parametrize(
    ("method", "params", "named"),
    [
        ("explain", None, "missing param 'stage'"),
        ("explain", {"stage": 3}, "'stage' must be"),
        ("explain", ["train"], "by position"),
        ("events_since", {}, "missing param 'cursor'"),
        ("events_since", {"cursor": -1}, "'cursor' must be a non-negative integer"),
        ("events_since", {"cursor": 1.5}, "'cursor' must be a non-negative integer"),
        ("events_since", {"cursor": True}, "'cursor' must be a non-negative integer"),
        ("run", {"stages": "train"}, "'stages' must be a list"),
        ("run", {"stages": ["train", 2]}, "'stages' must be a list"),
        ("run", {"force": "yes"}, "'force' must be true or false"),
        ("run", {"stage": ["train"]}, "unexpected param 'stage'"),
        ("status", {"verbose": True}, "unexpected param 'verbose'"),
    ],
)
def test_bad_params_are_refused_before_the_agent_is_called(
    client: Client, agent: FakeAgent, method: str, params: Any, named: str
) -> None:
    assert named in error_of(client.call(method, params), -32602)
    assert agent.calls == []


def test_an_rpc_error_of_the_agent_is_the_reply(client: Client) -> None:
    assert error_of(client.call("explain", {"stage": "nope"}), -32602) == "unknown stage 'nope'"
    assert error_of(client.call("run", {"stages": ["prepare", "nope"]}), -32602) == "unknown stage 'nope'"


def test_an_agent_that_raises_is_an_internal_error_and_the_server_goes_on(
    client: Client, connect: Callable[[], Client]
) -> None:
    reply = client.call("explain", {"stage": "boom"})
    assert error_of(reply, -32603) == "internal error"
    assert "KeyError" in reply["error"]["data"]["exception"]
    assert client.call("status")["result"]["state"] == "idle"
    assert connect().call("cancel")["result"] == {"cancelled": False}


def test_a_line_too_long_is_refused_and_the_connection_closed(client: Client, connect: Callable[[], Client]) -> None:
    request = b'{"jsonrpc": "2.0", "id": 1, "method": "status"}'
    client.send(request.ljust(MAX_LINE) + b"\n")  # as long as allowed: answered
    assert client.reply()["result"]["state"] == "idle"
    client.send(b" " * (MAX_LINE + 1))
    assert "at most" in error_of(client.reply(), -32600)
    assert client.reader.readline() == b""  # closed
    assert connect().call("status")["id"] == 1


# -- many clients ------------------------------------------------------------------------


def test_a_client_is_answered_while_another_waits_on_a_slow_agent_method(
    connect: Callable[[], Client], agent: FakeAgent
) -> None:
    slow, quick = connect(), connect()
    slow.request("explain", {"stage": "slow"})
    assert agent.entered.wait(HANG_GUARD_S)
    assert quick.call("status")["result"]["state"] == "idle"
    agent.release.set()
    assert slow.reply() == {"jsonrpc": "2.0", "id": 1, "result": {"will_run": False, "reason": None}}


def test_a_client_gone_mid_reply_stops_nobody(connect: Callable[[], Client], agent: FakeAgent) -> None:
    gone = connect()
    gone.request("events_since", {"cursor": BIG})
    wait_until(lambda: ("events_since", BIG) in agent.calls, HANG_GUARD_S, "the big call")
    gone.close()  # with most of the reply unread
    for _ in range(2):
        assert connect().call("status")["result"]["state"] == "idle"


def test_a_client_that_never_reads_blocks_nobody(
    connect: Callable[[], Client], server: AgentServer, agent: FakeAgent
) -> None:
    deaf = connect()
    for _ in range(3):  # replies far beyond what the socket buffers: its thread is stuck sending
        deaf.request("events_since", {"cursor": BIG})
    wait_until(lambda: ("events_since", BIG) in agent.calls, HANG_GUARD_S, "the big call")
    for _ in range(3):
        assert connect().call("explain", {"stage": "prepare"})["result"] == {"will_run": False, "reason": None}
    server.close()  # wakes the thread stuck sending: the connection ends (reset, if requests were left unread)
    with contextlib.suppress(ConnectionResetError):
        while deaf.sock.recv(1 << 20):
            pass


def test_close_ends_the_connections_of_idle_clients(client: Client, server: AgentServer) -> None:
    assert client.call("status")["id"] == 1
    server.close()
    assert client.reader.readline() == b""


# -- the socket file ---------------------------------------------------------------------


def test_the_socket_is_0600_whatever_the_umask_and_the_umask_is_left_alone(sock_path: Path, agent: FakeAgent) -> None:
    old = os.umask(0)
    try:
        with AgentServer(sock_path, agent):
            mode = sock_path.stat().st_mode
            assert os.umask(0) == 0  # (read back; put back below)
    finally:
        os.umask(old)
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert sorted(p.name for p in sock_path.parent.iterdir()) == []  # the file is removed, nothing left beside it


def test_a_stale_socket_file_is_replaced(sock_path: Path, agent: FakeAgent) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    at_path(sock_path, dead.bind)  # as a killed server leaves it: the file, nobody listening
    dead.close()
    assert stat.S_ISSOCK(sock_path.stat().st_mode)
    with AgentServer(sock_path, agent):
        c = Client(sock_path)
        assert c.call("status")["id"] == 1
        c.close()
    assert not sock_path.exists()


def test_a_live_servers_socket_is_not_taken_and_the_error_names_its_pid(
    server: AgentServer, client: Client, agent: FakeAgent
) -> None:
    with pytest.raises(AgentServerError) as caught:
        AgentServer(server.path, FakeAgent()).start()
    assert f"pid {os.getpid()}" in caught.value.message
    assert "already running" in caught.value.message
    assert client.call("stages")["id"] == 1  # the first server still has its socket
    assert agent.calls == [("stages",)]


def test_a_file_that_is_not_a_socket_is_left_alone(sock_path: Path, agent: FakeAgent) -> None:
    sock_path.write_text("mine\n")
    with pytest.raises(AgentServerError, match="not a socket"):
        AgentServer(sock_path, agent).start()
    assert sock_path.read_text() == "mine\n"


def test_a_missing_state_directory_is_an_error_naming_the_socket(tmp_path: Path, agent: FakeAgent) -> None:
    path = tmp_path / ".pivot" / "agent.sock"
    with pytest.raises(AgentServerError, match=r"cannot listen on .*agent\.sock: No such file"):
        AgentServer(path, agent).start()


def test_close_removes_the_socket_file_only_if_it_is_still_its_own(sock_path: Path, agent: FakeAgent) -> None:
    with AgentServer(sock_path, agent):
        assert sock_path.exists()
    assert not sock_path.exists()

    s = AgentServer(sock_path, agent)
    s.start()
    sock_path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    at_path(sock_path, other.bind)  # another server's, since
    s.close()
    assert stat.S_ISSOCK(sock_path.stat().st_mode)
    other.close()


def test_a_socket_path_longer_than_sun_path_works(tmp_path: Path, agent: FakeAgent) -> None:
    deep = tmp_path.joinpath("d" * 60, "e" * 60, ".pivot")
    deep.mkdir(parents=True)
    path = deep / "agent.sock"
    assert len(os.fsencode(path)) > 108
    with AgentServer(path, agent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        c = Client(path)
        assert c.call("status")["id"] == 1
        c.close()
    assert not path.exists()


# -- pivotbuild rpc ----------------------------------------------------------------------


@pytest.fixture
def served(project: Project, agent: FakeAgent) -> Iterator[Project]:
    """A project whose agent server (the fake agent) runs in this process."""
    project.pivotfile("stage prepare:\n    run: true\n")
    with AgentServer(project.root / AGENT_SOCKET, agent):
        yield project


def test_rpc_prints_the_result_as_one_json_line(served: Project, agent: FakeAgent) -> None:
    r = served.run("rpc", "explain", '{"stage": "train"}')
    assert r.code == 0, r
    assert r.out == '{"will_run": true, "reason": "dep changed: data.csv"}\n'
    assert r.err == ""
    r = served.run("rpc", "status")
    assert (r.code, json.loads(r.out)["state"]) == (0, "idle")
    assert agent.calls == [("explain", "train"), ("status",)]


def test_rpc_finds_the_server_from_elsewhere_with_c_and_f(served: Project, agent: FakeAgent) -> None:
    elsewhere = served.root.parent
    assert served.run("-C", "proj", "rpc", "cancel", cwd=elsewhere).out == '{"cancelled": false}\n'
    assert served.run("rpc", "-f", "proj/Pivotfile", "cancel", cwd=elsewhere).code == 0
    assert agent.calls == [("cancel",), ("cancel",)]


def test_rpc_an_error_reply_is_exit_1(served: Project) -> None:
    r = served.run("rpc", "explain", '{"stage": "nope"}')
    assert (r.code, r.out) == (1, "")
    assert r.err == "pivotbuild: agent error -32602: unknown stage 'nope'\n"
    r = served.run("rpc", "reboot")
    assert r.code == 1
    assert r.err.startswith("pivotbuild: agent error -32601: unknown method 'reboot'")


def test_rpc_without_a_server_is_exit_2(project: Project) -> None:
    message = "pivotbuild: no agent server is running for this project (start one with 'pivotbuild -w --serve')\n"
    r = project.run("rpc", "status")
    assert (r.code, r.out, r.err) == (2, "", message)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    at_path(project.root / AGENT_SOCKET, dead.bind)  # a killed server's socket file
    dead.close()
    assert project.run("rpc", "status").err == message


@pytest.mark.parametrize(("params", "named"), [("{stage: train}", "not JSON"), ('["train"]', "not a JSON object")])
def test_rpc_params_that_are_no_json_object_are_exit_2(
    served: Project, agent: FakeAgent, params: str, named: str
) -> None:
    r = served.run("rpc", "explain", params)
    assert r.code == 2, r
    assert r.err.startswith(f"pivotbuild: the params are {named}")
    assert agent.calls == []


def test_rpc_gives_up_after_its_timeout(served: Project, agent: FakeAgent) -> None:
    r = served.run("rpc", "--timeout", "0.5", "explain", '{"stage": "slow"}')  # never answered until released
    agent.release.set()
    assert (r.code, r.out) == (1, "")
    assert r.err == "pivotbuild: the agent server did not answer within 0.5s; try again, or a longer --timeout\n"
