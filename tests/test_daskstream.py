"""daskstream.py's build side: a task's lines come by events while it runs
and the rest from its result's tail, each once; a run started over (its
worker lost) says so (the end-to-end behaviour is in test_dask_stages.py,
against a real cluster)."""

from __future__ import annotations

from pivotbuild.build.executors.daskstream import RAN_AGAIN, Lines, Streams
from pivotbuild.events import Event, Log


def _lines(n: int, tag: str = "l") -> list[tuple[str, str]]:
    return [("stdout", f"{tag}{i}") for i in range(1, n + 1)]


def _shown(events: list[Event]) -> list[str]:
    assert all(isinstance(e, Log) and e.stage == "stage" for e in events)
    return [e.line for e in events if isinstance(e, Log)]


def test_the_tail_adds_only_what_the_events_did_not_bring_and_late_events_are_dropped() -> None:
    shown: list[Event] = []
    streams = Streams(shown.append)
    streams.expect("k", "stage")
    streams.heard((0.0, ["k", "r1", [list(line) for line in _lines(1)]]))
    streams.heard((0.0, ("k", "r1", (("stdout", "l2"),))))  # (as msgpack brings it over TCP)
    streams.heard((0.0, ["other-build", "r9", [["stdout", "not ours"]]]))
    streams.heard((0.0, {"action": "add-client", "client": "c"}))  # (the scheduler's own, on the topic)
    streams.done("k", "r1", tuple(_lines(5)[2:]), 5)
    streams.heard((0.0, ["k", "r1", [["stdout", "late"]]]))
    assert _shown(shown) == ["l1", "l2", "l3", "l4", "l5"]


def test_without_events_the_tail_is_shown_whole() -> None:
    shown: list[Event] = []
    streams = Streams(shown.append)
    streams.expect("k", "stage")
    streams.done("k", "r1", tuple(_lines(3)), 3)
    streams.forget("k")
    assert _shown(shown) == ["l1", "l2", "l3"]


def test_a_run_started_over_says_so_and_its_lines_are_counted_afresh() -> None:
    shown: list[Event] = []
    streams = Streams(shown.append)
    streams.expect("k", "stage")
    streams.heard((0.0, ["k", "r1", [list(line) for line in _lines(3, "a")]]))  # (then its worker was lost)
    streams.heard((0.0, ["k", "r2", [list(line) for line in _lines(1, "b")]]))
    streams.done("k", "r2", tuple(_lines(2, "b")), 2)
    assert _shown(shown) == ["a1", "a2", "a3", RAN_AGAIN, "b1", "b2"]


def test_lines_outside_a_worker_keep_the_tail_and_count_every_line() -> None:
    lines = Lines("a-topic")  # (no Dask worker here: nothing is published)
    for stream, line in _lines(1500):
        lines.add(stream, line)
    lines.close()
    assert lines.total == 1500
    assert lines.tail[0] == ("stdout", "l501") and len(lines.tail) == 1000
