"""decider.Decider: up to date or run, and why, for one stage of a build or a plan
(-B, always, the seal, an upstream stage that ran or will run, pending commit)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import compile_text
from helpers import PAIR

from pivotbuild import paths
from pivotbuild.build.decider import (
    ALWAYS,
    FORCED,
    NEVER_RUN,
    PENDING_COMMIT,
    UP_TO_DATE,
    Decider,
    Decision,
)
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId
from pivotbuild.state import snapshot
from pivotbuild.state.records import StageRecord
from pivotbuild.state.store import StateStore

TEXT = (
    PAIR
    + """
stage c:
    always: yes
    run: true
"""
)

A, B, C = StageId("", "a"), StageId("", "b"), StageId("", "c")


class FakeSeal:
    """A seal that holds for the stage indices given, counting what it is asked."""

    def __init__(self, holding: Iterable[int]) -> None:
        self.holding = set(holding)
        self.asked: list[list[int]] = []

    def holds(self, stages: Iterable[int]) -> bool:
        asked = list(stages)
        self.asked.append(asked)
        return all(i in self.holding for i in asked)


class Build:
    """A compiled project in a temporary root, its graph and an open state store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "in.txt").write_text("in\n")
        (root / "a.txt").write_text("in\n")
        (root / "b.txt").write_text("in\n")
        pipeline = compile_text(TEXT, root)
        self.graph = BuildGraph(pipeline.stages)
        self.store = StateStore(root, [pipeline], lambda text: None)

    def record(self, sid: StageId, *, pending: bool = False) -> None:
        """Commit the record a successful run of `sid` would leave now."""
        stage = self.graph.stages[sid]
        snap = snapshot.take(stage, self.root, self.store.statcache(stage))
        rec = StageRecord(stage.name, snap.fingerprint, snap.command, snap.deps, snap.outs, snap.params, snap.facets)
        self.store.commit(stage, rec, pending=pending)

    def decider(self, **kwargs: object) -> Decider:
        return Decider(self.graph, self.store, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def build(tmp_path: Path) -> Build:
    root = (tmp_path / "proj").resolve()
    (root / ".pivot").mkdir(parents=True)
    return Build(root)


def test_a_stage_without_a_record_never_ran(build: Build) -> None:
    v = build.decider().stage(A)
    assert (v.run, v.reason, v.sealed) == (True, NEVER_RUN, False)
    assert v.snap is not None  # what the stage will run with, and be recorded with


def test_a_recorded_stage_with_unchanged_deps_is_up_to_date(build: Build) -> None:
    build.record(A)
    v = build.decider().stage(A)
    assert (v.run, v.reason) == (False, UP_TO_DATE)
    assert v.decision == Decision(False, UP_TO_DATE)


def test_a_changed_dep_is_the_reason(build: Build) -> None:
    build.record(A)
    (build.root / "in.txt").write_text("changed\n")
    assert build.decider().stage(A).decision == Decision(True, "dep in.txt changed")


def test_forced_runs_an_up_to_date_stage_and_still_hashes_it_for_the_build(build: Build) -> None:
    build.record(A)
    v = build.decider(forced=True).stage(A)
    assert (v.run, v.reason) == (True, FORCED)
    assert v.snap is not None


def test_an_always_stage_runs_for_that_reason(build: Build) -> None:
    build.record(C)
    assert build.decider().stage(C).decision == Decision(True, ALWAYS)


def test_in_a_plan_a_stage_after_one_that_will_run_will_run_too_unhashed(build: Build) -> None:
    build.record(A)
    build.record(B)
    v = build.decider(plan=True).stage(B, ran=A)
    assert v.decision == Decision(True, "upstream a will run")
    assert v.snap is None


def test_in_a_plan_forced_wins_over_upstream_and_hashes_nothing(build: Build) -> None:
    v = build.decider(plan=True, forced=True).stage(B, ran=A)
    assert (v.run, v.reason, v.snap) == (True, FORCED, None)


def test_in_a_build_a_stage_after_one_that_ran_is_decided_by_its_contents(build: Build) -> None:
    # The upstream stage ran but rewrote its output identically: nothing to do.
    build.record(A)
    build.record(B)
    assert build.decider().stage(B, ran=A).decision == Decision(False, UP_TO_DATE)
    (build.root / "a.txt").write_text("new\n")
    assert build.decider().stage(B, ran=A).decision == Decision(True, "dep a.txt changed")


def test_the_seal_skips_a_stage_without_hashing_it(build: Build) -> None:
    (build.root / "in.txt").unlink()  # hashing would find the dep gone
    seal = FakeSeal([build.graph.index_of(A)])
    v = build.decider(seal=seal).stage(A)
    assert (v.run, v.reason, v.sealed, v.snap) == (False, UP_TO_DATE, True, None)
    assert seal.asked == [[build.graph.index_of(A)]]


def test_a_stage_the_fast_path_found_sealed_is_not_statted_again_until_a_stage_starts(build: Build) -> None:
    a, b = build.graph.index_of(A), build.graph.index_of(B)
    seal = FakeSeal([])  # what the seal would say now: nothing holds (an edit since the fast path looked)
    decider = build.decider(seal=seal, trusted=frozenset({a}))
    assert decider.stage(A).decision == Decision(False, UP_TO_DATE)  # nothing has run: the fast path's look stands
    assert seal.asked == []
    decider.distrust()  # a stage started: stamps may change under the build from now on
    assert decider.stage(A).decision == Decision(True, NEVER_RUN)
    assert decider.stage(B).run
    assert seal.asked == [[a], [b]]


def test_a_stage_the_seal_does_not_hold_is_hashed(build: Build) -> None:
    seal = FakeSeal([])
    v = build.decider(seal=seal).stage(A)
    assert (v.run, v.reason, v.sealed) == (True, NEVER_RUN, False)


def test_the_seal_is_not_asked_after_an_upstream_stage_wrote_or_when_forced(build: Build) -> None:
    seal = FakeSeal([0, 1, 2])
    assert build.decider(seal=seal).stage(B, ran=A).decision == Decision(True, NEVER_RUN)
    assert build.decider(seal=seal, forced=True).stage(A).decision == Decision(True, FORCED)
    assert seal.asked == []


def test_shown_marks_an_up_to_date_stage_with_a_pending_result(build: Build) -> None:
    build.record(A, pending=True)
    build.record(B)
    decider = build.decider(plan=True)
    a = decider.stage(A).decision
    assert a == Decision(False, UP_TO_DATE)
    assert decider.shown(A, a) == Decision(False, PENDING_COMMIT)
    assert decider.shown(B, decider.stage(B).decision) == Decision(False, UP_TO_DATE)
    assert decider.shown(A, Decision(True, FORCED)) == Decision(True, FORCED)  # a stage to run stays so


@pytest.mark.parametrize(
    "value",
    [
        [("out/1_2.txt", False, True, False, False)],
        ["md5sum a.txt > b.txt", (("shell", "ab"), ("env", "cd")), [("params.yaml", "lr", "0.5")], []],
        [1.5, float("nan"), None, True, "é\u2028\"'\\", {"k": [1, 2]}, ()],
        ("/bin/sh", "-e"),
    ],
)
def test_fingerprints_hash_the_json_text_they_always_did(value: object) -> None:
    """Decisions encode through one C encoder made once: its text must be
    json.dumps's, byte for byte, or every record would look changed."""
    assert snapshot.json_text(value) == json.dumps(value)


@pytest.mark.parametrize("root", ["/w/project", "/w/project/", "/"])
@pytest.mark.parametrize("path", ["a.txt", "out/1_2.txt", "/abs/x", "", "./x"])
def test_a_deps_full_path_is_what_os_path_join_makes(root: str, path: str) -> None:
    assert paths.joined(Path(root), path) == os.path.join(root, path)
