"""A project restored from its compiled plan is the project compiled, and its
stages are made only as the build asks for them (restored.LazyStages): a build
that decides a few stages of many makes those."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgpack
import pytest
from conftest import Project as Scratch

from pivotbuild.build.load import load_compiled
from pivotbuild.graph import BuildGraph
from pivotbuild.model import Pipeline, Stage, StageId
from pivotbuild.project import LoadOptions, Project
from pivotbuild.restored import LazyStages, StagesOf
from pivotbuild.state import plan
from pivotbuild.structs import replace

ROOT = """\
include sub/

stage gen:
    matrix: n=1 2 3
    deps: src/in.txt
    outs: data/part-${n}.txt
    params: train.epochs
    env: KIND=part${n}
    mutex: disk
    run: cat $< > $@

stage sq:
    deps: src/in.txt
    outs: sq.txt
    py: steps:square

stage report:
    deps: data/part-1.txt data/part-2.txt data/part-3.txt sub/s.txt
    outs: report.txt tree/
    always: true
    run: cat $^ > report.txt; mkdir -p tree
"""

SUB = """\
stage s:
    deps: in.txt
    outs: s.txt
    run: cp $< $@
"""


def _compiled_then_restored(root: Path) -> tuple[tuple[Project, BuildGraph], tuple[Project, BuildGraph]]:
    options = LoadOptions(root)
    warnings: list[str] = []
    compiled = load_compiled(options, warnings.append)  # (compiles, and writes the plan)
    restored = load_compiled(options, warnings.append)  # (restores from it)
    assert warnings == []
    return compiled, restored


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "Pivotfile").write_text(ROOT)
    (tmp_path / "sub/Pivotfile").write_text(SUB)
    (tmp_path / "params.toml").write_text("[train]\nepochs = 3\n")
    (tmp_path / "steps.py").write_text("def square(ctx):\n    pass\n")
    (tmp_path / "src/in.txt").write_text("x\n")
    (tmp_path / "sub/in.txt").write_text("y\n")
    return tmp_path


def unread(project: Project) -> tuple[Pipeline, ...]:
    return tuple(replace(p, inputs=()) for p in project.pipelines)


def _made(stages: dict[StageId, Stage]) -> int:
    return dict.__len__(stages)


def test_a_restored_project_and_graph_are_the_compiled_ones(root: Path) -> None:
    (project, graph), (again, restored) = _compiled_then_restored(root)
    assert isinstance(restored.stages, LazyStages) and not isinstance(graph.stages, LazyStages)
    assert _made(restored.stages) == 0
    # (A pipeline's `inputs`, its params files as read, are not restored: the
    # project's `sources` hold them, and say when the plan is stale.)
    assert again == replace(project, main=replace(project.main, inputs=()), pipelines=unread(project))
    assert restored.stages == graph.stages
    assert list(restored.stages) == list(graph.stages)  # declaration order
    for mine, theirs in zip(again.pipelines, project.pipelines, strict=True):
        assert isinstance(mine.stages, StagesOf)
        assert mine.stages == theirs.stages and theirs.stages == mine.stages
        assert hash(mine.stages) == hash(theirs.stages) and mine.stages[1:] == theirs.stages[1:]
    assert again.stages == project.stages
    for sid in graph.stages:
        assert restored.runs_python(sid) == (graph.stages[sid].py is not None) == graph.runs_python(sid)
        assert restored.always_runs(sid) == graph.stages[sid].always == graph.always_runs(sid)
        assert restored.producer(graph.stages[sid].outs[0].path) == sid
    assert restored.order() == graph.order()
    assert restored.ids == graph.ids == list(graph.stages)


def test_a_stage_is_made_when_first_asked_for_and_once(root: Path) -> None:
    _, (_, graph) = _compiled_then_restored(root)
    stages = graph.stages
    report = StageId("", "report")
    assert len(stages) == 6 and report in stages and StageId("", "nope") not in stages
    assert _made(stages) == 0
    first = stages[report]
    assert _made(stages) == 1 and stages[report] is first and stages.get(report) is first
    assert stages.get(StageId("", "nope")) is None
    with pytest.raises(KeyError):
        stages[StageId("", "nope")]
    # What the build asks of the stages it does not decide needs none made.
    assert [sid for sid in graph.ids if graph.always_runs(sid)] == [report]
    assert graph.missing_sources(lambda p: True, among=[report]) == []
    assert _made(stages) == 1
    # Whatever looks at them all makes them all, in declaration order.
    assert [s.id for s in stages.values()] == graph.ids
    assert _made(stages) == 6 and stages[report] is first


def test_threads_asking_for_one_stage_get_one_stage() -> None:
    ids = [StageId("", "a"), StageId("", "b")]
    calls: list[int] = []

    def make(i: int) -> Stage:
        calls.append(i)
        time.sleep(0.05)  # (long enough for the other thread to ask meanwhile)
        return Stage(ids[i], ids[i].name, None, ("true",))  # type: ignore[arg-type]

    stages = LazyStages(ids, {sid: i for i, sid in enumerate(ids)}, make)
    got: list[Stage] = []
    threads = [threading.Thread(target=lambda: got.append(stages[ids[1]])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and got[0] is got[1]


def test_a_plan_record_that_does_not_decode_stops_the_build_once_with_what_to_do(project: Scratch) -> None:
    """The plan is checked by its checksum when read, so only a pivotbuild bug
    writes such a record: the build that meets it says so, without a
    traceback, and removes the plan; the next build compiles afresh."""
    project.pivotfile(
        "stage a:\n    deps: in.txt\n    outs: a.txt\n    run: cp $< $@\n\n"
        "stage b:\n    deps: a.txt\n    outs: b.txt\n    run: cp $< $@\n"
    )
    project.write("in.txt", "x\n")
    assert project.run().code == 0
    project.write("in.txt", "y\n")
    path = project.root / ".pivot/plan"
    key, root, sources, index, body = plan.FRAME.load(path.read_bytes())
    pipelines, records, main_at, outs, python = msgpack.unpackb(body)
    record = msgpack.unpackb(records[1])
    record[4] = ["cp ", 99]  # b's command: an automatic variable that does not exist
    records[1] = msgpack.packb(record, use_bin_type=True)
    body = msgpack.packb([pipelines, records, main_at, outs, python], use_bin_type=True)
    path.write_bytes(plan.FRAME.dump([key, root, sources, index, body]))

    first = project.run()
    assert first.code == 2 and "Traceback" not in first.err, first.err
    assert "the compiled plan's record of stage b does not decode" in first.err
    assert "run pivotbuild again" in first.err
    assert not path.exists() and not (project.root / ".pivot/crash.log").exists()
    again = project.run()
    assert again.code == 0, again.err
    assert (project.root / "b.txt").read_text() == "y\n"
