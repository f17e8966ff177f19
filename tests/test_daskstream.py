"""daskstream.py's build side: a task's lines come by events while it runs
and the rest from its result's tail, each once (the end-to-end behaviour is
in test_dask_stages.py, against a real cluster)."""

from __future__ import annotations

from pivotbuild.build.executors.daskstream import Lines, Streams
from pivotbuild.events import Event, Log


def _lines(n: int) -> list[tuple[str, str]]:
    return [("stdout", f"l{i}") for i in range(1, n + 1)]


def test_the_tail_adds_only_what_the_events_did_not_bring_and_late_events_are_dropped() -> None:
    shown: list[Event] = []
    streams = Streams(shown.append)
    streams.expect("k", "stage")
    streams.heard((0.0, ["k", [list(line) for line in _lines(2)]]))
    streams.heard((0.0, ["other-build", [["stdout", "not ours"]]]))
    streams.heard((0.0, {"action": "add-client"}))  # (Dask's own events on the topic)
    streams.done("k", tuple(_lines(5)[2:]), 5)
    streams.heard((0.0, ["k", [["stdout", "late"]]]))
    assert [(e.stage, e.stream, e.line) for e in shown if isinstance(e, Log)] == [
        ("stage", "stdout", f"l{i}") for i in range(1, 6)
    ]
    assert len(shown) == 5


def test_without_events_the_tail_is_shown_whole() -> None:
    shown: list[Event] = []
    streams = Streams(shown.append)
    streams.expect("k", "stage")
    streams.done("k", tuple(_lines(3)), 3)
    streams.forget("k")
    assert [e.line for e in shown if isinstance(e, Log)] == ["l1", "l2", "l3"]


def test_lines_outside_a_worker_keep_the_tail_and_count_every_line() -> None:
    lines = Lines("a-topic")  # (no Dask worker here: nothing is published)
    for stream, line in _lines(1500):
        lines.add(stream, line)
    lines.close()
    assert lines.total == 1500
    assert lines.tail[0] == ("stdout", "l501") and len(lines.tail) == 1000
