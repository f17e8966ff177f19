"""scheduler: the Scheduler (the ready queue, release, critical-path order,
blocking) and critical_path, the lengths it orders by."""

from __future__ import annotations

import pytest
from helpers import sid

from pivotbuild.build.scheduler import Scheduler, critical_path
from pivotbuild.events import Status
from pivotbuild.model import StageId

A, B, C, D, E = (StageId("", n) for n in "abcde")

# a -> c -> e, b -> d -> e (e reads both c and d)
EDGES = {A: [], B: [], C: [A], D: [B], E: [C, D]}
ORDER = [A, B, C, D, E]


def drain(s: Scheduler) -> list[StageId]:
    out = []
    while (sid := s.pop_ready()) is not None:
        out.append(sid)
    return out


def test_only_stages_waiting_on_nothing_are_ready_at_first() -> None:
    assert drain(Scheduler(ORDER, EDGES, {})) == [A, B]


def test_a_stage_becomes_ready_once_every_stage_it_waits_on_succeeded() -> None:
    s = Scheduler(ORDER, EDGES, {})
    drain(s)
    s.finish(A, Status.RAN)
    assert drain(s) == [C]
    s.finish(C, Status.SKIPPED)
    assert drain(s) == []  # e still waits on d
    s.finish(B, Status.RESTORED)
    assert drain(s) == [D]
    s.finish(D, Status.RAN)
    assert drain(s) == [E]


def test_a_cancelled_stage_releases_nothing() -> None:
    s = Scheduler(ORDER, EDGES, {})
    drain(s)
    s.finish(A, Status.CANCELLED)
    assert drain(s) == []
    assert s.unfinished() == [B, C, D, E]


def test_ready_stages_start_by_their_longest_remaining_path() -> None:
    # b's path (b, d, e) is longer than a's by past durations: b goes first.
    s = Scheduler(ORDER, EDGES, {A: 1.0, C: 1.0, B: 5.0, D: 5.0, E: 1.0})
    assert sorted([A, B], key=s.key) == [B, A]
    assert sorted([C, D], key=s.key) == [D, C]
    # Without history every stage counts 1: ties keep the order given.
    assert sorted([B, A], key=Scheduler(ORDER, EDGES, {}).key) == [B, A]


def test_a_failure_blocks_everything_after_it_in_build_order() -> None:
    s = Scheduler(ORDER, EDGES, {})
    drain(s)
    assert s.fail(A) == [C, E]
    assert s.status[A] is Status.FAILED
    s.finish(B, Status.RAN)
    assert drain(s) == [D]  # the other branch goes on (keep-going is the loop's choice)


def test_a_failure_does_not_block_stages_already_finished() -> None:
    s = Scheduler(ORDER, EDGES, {})
    s.finish(A, Status.RAN)
    s.finish(C, Status.RAN)
    s.finish(B, Status.RAN)
    assert s.fail(D) == [E]


def test_without_blocking_a_failure_releases_what_follows() -> None:
    chain = {A: [], B: [A], C: [B]}
    s = Scheduler([A, B, C], chain, {}, block_on_failure=False)
    drain(s)
    assert s.fail(A) == []
    assert drain(s) == [B]


def test_upstream_wrote_names_the_first_stage_that_ran_or_was_restored() -> None:
    s = Scheduler(ORDER, EDGES, {})
    s.finish(A, Status.SKIPPED)
    s.finish(C, Status.SKIPPED)
    s.finish(B, Status.RAN)
    s.finish(D, Status.RESTORED)
    assert s.upstream_wrote(C) is None  # a was skipped
    assert s.upstream_wrote(D) == B
    assert s.upstream_wrote(E) == D  # c skipped, d restored


def test_counts_cover_every_status() -> None:
    s = Scheduler(ORDER, EDGES, {})
    s.finish(A, Status.RAN)
    s.finish(B, Status.SKIPPED)
    s.fail(C)
    s.finish(E, Status.BLOCKED)
    counts = s.counts()
    assert counts[Status.RAN] == counts[Status.SKIPPED] == counts[Status.FAILED] == counts[Status.BLOCKED] == 1
    assert counts[Status.CANCELLED] == counts[Status.RESTORED] == 0
    assert s.unfinished() == [D]


# -- critical path ---------------------------------------------------------------------


def test_critical_path_chain() -> None:
    a, b, c = sid("a"), sid("b"), sid("c")
    edges = {a: [b], b: [c], c: []}
    lengths = critical_path([a, b, c], lambda s: edges[s], {a: 2.0, c: 5.0})
    assert lengths == {c: 5.0, b: 6.0, a: 8.0}


def test_critical_path_diamond() -> None:
    a, b, c, d = sid("a"), sid("b"), sid("c"), sid("d")
    edges = {a: [b, c], b: [d], c: [d], d: []}
    durations = {a: 1.0, b: 10.0, c: 2.0, d: 3.0}
    lengths = critical_path([a, b, c, d], lambda s: edges[s], durations)
    assert lengths == {d: 3.0, b: 13.0, c: 5.0, a: 14.0}
    # The ready stage heading the longer path goes first.
    assert max([b, c], key=lambda s: lengths[s]) == b


def test_critical_path_defaults_to_one_without_history() -> None:
    a, b, c, d = sid("a"), sid("b"), sid("c"), sid("d")
    edges = {a: [b, c], b: [d], c: [], d: []}
    assert critical_path([a, b, c, d], lambda s: edges[s], {}) == {d: 1.0, c: 1.0, b: 2.0, a: 3.0}


def test_critical_path_ignores_stages_outside_the_build() -> None:
    a, b, x = sid("a"), sid("b"), sid("x")
    edges = {a: [b, x], b: []}
    lengths = critical_path([a, b], lambda s: edges[s], {x: 100.0})
    assert lengths == {b: 1.0, a: 2.0}


@pytest.mark.parametrize("n", [1, 5, 50])
def test_critical_path_long_chain(n: int) -> None:
    ids = [sid(f"s{i}") for i in range(n)]
    edges = {ids[i]: [ids[i + 1]] if i + 1 < n else [] for i in range(n)}
    lengths = critical_path(ids, lambda s: edges[s], {})
    assert [lengths[s] for s in ids] == [float(n - i) for i in range(n)]
