"""BuildGraph: the bipartite stage/artifact graph, its validation and its queries."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import tracing
from conftest import Project, compile_text
from helpers import runs, sid, where

from pivotbuild.errors import CycleError, GraphError
from pivotbuild.globs import glob_regex
from pivotbuild.graph import ARTIFACT, STAGE, BuildGraph
from pivotbuild.model import StageId


def build(tmp_path: Path, text: str) -> BuildGraph:
    return BuildGraph(compile_text(text, tmp_path).stages)


def names(ids: list[StageId]) -> list[str]:
    return [s.name for s in ids]


CHAIN = """
stage prepare:
    deps: data/raw.csv
    outs: build/clean.csv
    run: cp $< $@

stage train:
    deps: build/clean.csv src/train.py
    outs: models/model.pkl
    run: python src/train.py

stage report:
    deps: models/model.pkl build/clean.csv
    outs: reports/summary.json
    run: python report.py
"""


# -- structure ---------------------------------------------------------------------


def test_nodes_are_stage_ids_and_path_strings_with_bipartite_attribute(tmp_path: Path) -> None:
    g = build(tmp_path, CHAIN)
    stage_nodes = {n for n, d in g.g.nodes(data=True) if d["bipartite"] == STAGE}
    artifact_nodes = {n for n, d in g.g.nodes(data=True) if d["bipartite"] == ARTIFACT}
    assert stage_nodes == {sid("prepare"), sid("train"), sid("report")}
    assert all(isinstance(n, StageId) for n in stage_nodes)
    assert artifact_nodes == {
        "data/raw.csv",
        "build/clean.csv",
        "src/train.py",
        "models/model.pkl",
        "reports/summary.json",
    }
    assert all(isinstance(n, str) for n in artifact_nodes)
    assert STAGE == 0
    assert ARTIFACT == 1


def test_edges_run_artifact_to_stage_and_stage_to_artifact(tmp_path: Path) -> None:
    g = build(tmp_path, CHAIN)
    for u, v in g.g.edges:
        assert isinstance(u, StageId) != isinstance(v, StageId), (u, v)
    # consumed by
    assert g.g.has_edge("data/raw.csv", sid("prepare"))
    assert g.g.has_edge("build/clean.csv", sid("train"))
    assert g.g.has_edge("build/clean.csv", sid("report"))
    # produced
    assert g.g.has_edge(sid("prepare"), "build/clean.csv")
    assert g.g.has_edge(sid("train"), "models/model.pkl")
    # never the other way round
    assert not g.g.has_edge(sid("prepare"), "data/raw.csv")
    assert not g.g.has_edge("build/clean.csv", sid("prepare"))


def test_stage_edges_project_the_bipartite_graph(tmp_path: Path) -> None:
    g = build(tmp_path, CHAIN)
    edges = {(a.name, b.name) for a, b in g.stage_edges()}
    assert edges == {("prepare", "train"), ("prepare", "report"), ("train", "report")}


def test_stages_without_files_are_still_nodes(tmp_path: Path) -> None:
    g = build(tmp_path, "stage hello:\n    run: echo hi\n")
    assert list(g.stages) == [sid("hello")]
    assert g.order() == [sid("hello")]
    assert g.upstream_stages(sid("hello")) == []


# -- validation ----------------------------------------------------------------------


def located(tmp_path: Path, text: str) -> BuildGraph:
    """Like `build`, the errors quoting their source lines from `text`."""
    source = textwrap.dedent(text).lstrip("\n").split("\n")
    return BuildGraph(compile_text(text, tmp_path).stages, "", lambda loc: source[loc.line - 1])


def test_two_stage_cycle_is_located_at_the_first_stage_with_a_note_at_each_link(tmp_path: Path) -> None:
    text = """
    stage a:
        deps: y.txt
        outs: x.txt
        run: r
    stage b:
        deps: x.txt
        outs: y.txt
        run: r
    """
    with pytest.raises(CycleError) as info:
        located(tmp_path, text)
    assert info.value.cycle == ("a", "b", "a")
    assert isinstance(info.value, GraphError)
    (d,) = info.value.diagnostics
    assert (d.loc.path, *where(d)) == ("Pivotfile", 1, 7)
    assert d.severity == "error"
    assert "dependency cycle: a -> b -> a" in d.message
    assert d.source_line == "stage a:"
    assert [(where(n), n.severity, n.message) for n in d.notes] == [
        ((6, 11), "note", "b reads 'x.txt', written by a"),
        ((2, 11), "note", "a reads 'y.txt', written by b"),
    ]
    assert [n.source_line for n in d.notes] == ["    deps: x.txt", "    deps: y.txt"]


def test_three_stage_cycle_notes_every_link(tmp_path: Path) -> None:
    text = """
    stage a:
        deps: c.txt
        outs: a.txt
        run: r
    stage b:
        deps: a.txt
        outs: b.txt
        run: r
    stage c:
        deps: b.txt
        outs: c.txt
        run: r
    """
    with pytest.raises(CycleError) as info:
        build(tmp_path, text)
    (d,) = info.value.diagnostics
    assert "a -> b -> c -> a" in d.message
    assert [where(n) for n in d.notes] == [(6, 11), (10, 11), (2, 11)]
    assert ["'a.txt'" in d.notes[0].message, "'b.txt'" in d.notes[1].message, "'c.txt'" in d.notes[2].message] == [
        True
    ] * 3


def test_self_cycle_stage_reads_its_own_output(tmp_path: Path) -> None:
    text = """
    stage loop:
        deps: out.txt
        outs: out.txt
        run: r
    """
    with pytest.raises(CycleError) as info:
        build(tmp_path, text)
    (d,) = info.value.diagnostics
    assert "loop -> loop" in d.message
    assert [(where(n), n.message) for n in d.notes] == [((2, 11), "loop reads 'out.txt', written by loop")]


def test_self_cycle_through_a_file_inside_its_output_directory(tmp_path: Path) -> None:
    text = """
    stage loop:
        deps: cache/index.json
        outs: cache/
        run: r
    """
    with pytest.raises(CycleError) as info:
        build(tmp_path, text)
    (d,) = info.value.diagnostics
    assert "loop -> loop" in d.message
    assert [where(n) for n in d.notes] == [(2, 11)]


def test_every_separate_cycle_is_reported_shortest_loop_first_stage_first(tmp_path: Path) -> None:
    text = """
    stage free:
        outs: f.txt
        run: r
    stage p:
        deps: q.txt f.txt
        outs: p.txt
        run: r
    stage q:
        deps: p.txt
        outs: q.txt
        run: r
    stage s:
        deps: s.txt
        outs: s.txt
        run: r
    """
    with pytest.raises(CycleError) as info:
        build(tmp_path, text)
    assert info.value.cycle == ("p", "q", "p")
    assert [(where(d), d.message) for d in info.value.diagnostics] == [
        (
            (4, 7),
            "dependency cycle: p -> q -> p (each stage writes a file the next one reads); "
            "drop one of the deps noted below to break it",
        ),
        ((12, 7), "dependency cycle: s -> s: it reads a file it writes; drop that dep"),
    ]


def test_cycle_is_not_reported_for_a_diamond(tmp_path: Path) -> None:
    text = """
    stage a:
        outs: a.txt
        run: r
    stage b:
        deps: a.txt
        outs: b.txt
        run: r
    stage c:
        deps: a.txt
        outs: c.txt
        run: r
    stage d:
        deps: b.txt c.txt
        outs: d.txt
        run: r
    """
    g = build(tmp_path, text)
    assert names(g.order()) == ["a", "b", "c", "d"]


def test_two_stages_writing_one_path_is_located_at_the_second_with_a_note_at_the_first(tmp_path: Path) -> None:
    text = """
    stage first:
        outs: shared/out.txt
        run: r
    stage second:
        outs: other.txt shared/out.txt
        run: r
    """
    with pytest.raises(GraphError) as info:
        located(tmp_path, text)
    assert not isinstance(info.value, CycleError)
    (d,) = info.value.diagnostics
    assert where(d) == (5, 21)
    assert d.message == "two stages write 'shared/out.txt': first and second; give each stage its own outputs"
    assert d.source_line == "    outs: other.txt shared/out.txt"
    assert [(where(n), n.severity, n.message) for n in d.notes] == [
        ((2, 11), "note", "first writes 'shared/out.txt' here")
    ]
    assert d.render().splitlines() == [
        "Pivotfile:5:21: error: two stages write 'shared/out.txt': first and second; give each stage its own outputs",
        "        outs: other.txt shared/out.txt",
        "                        ^",
        "Pivotfile:2:11: note: first writes 'shared/out.txt' here",
        "        outs: shared/out.txt",
        "              ^",
    ]


def test_a_matrix_variant_and_a_stage_writing_one_path_name_both(tmp_path: Path) -> None:
    text = """
    stage a:
        outs: out.txt
        run: r
    stage b:
        matrix: k=1 2
        outs: other-${k}.txt
        run: r
    stage c:
        outs: other-2.txt
        run: r
    """
    with pytest.raises(GraphError) as info:
        build(tmp_path, text)
    (d,) = info.value.diagnostics
    assert where(d) == (9, 11)
    assert "two stages write 'other-2.txt': b@2 and c" in d.message
    assert [(where(n), n.message) for n in d.notes] == [((6, 11), "b@2 writes 'other-2.txt' here")]


def test_matrix_variants_writing_one_path_are_one_error_at_the_outs_word(tmp_path: Path) -> None:
    text = """
    stage train:
        matrix: model=a b c
        outs: model.pkl
        run: r
    """
    with pytest.raises(GraphError) as info:
        build(tmp_path, text)
    (d,) = info.value.diagnostics
    assert where(d) == (3, 11)
    assert "two stages write 'model.pkl': train@a, train@b, train@c" in d.message
    assert d.message.endswith("; put ${model} in the path")
    assert d.notes == ()


def test_matrix_variants_writing_one_path_are_told_the_axes_that_tell_them_apart(tmp_path: Path) -> None:
    text = """
    stage train:
        matrix: model=a b lr=1 2
        outs: model-${model}.pkl
        run: r
    """
    with pytest.raises(GraphError) as info:
        build(tmp_path, text)
    assert [d.message for d in info.value.diagnostics] == [
        "two stages write 'model-a.pkl': train@a-1 and train@a-2; put ${lr} in the path",
        "two stages write 'model-b.pkl': train@b-1 and train@b-2; put ${lr} in the path",
    ]


def test_output_inside_another_stages_output_directory_is_located_at_it(tmp_path: Path) -> None:
    text = """
    stage plots:
        outs: reports/plots/
        run: r
    stage summary:
        outs: reports/plots/summary.png
        run: r
    """
    with pytest.raises(GraphError) as info:
        located(tmp_path, text)
    (d,) = info.value.diagnostics
    assert where(d) == (5, 11)
    assert d.message.startswith(
        "output 'reports/plots/summary.png' of summary is inside output directory 'reports/plots/' of plots"
    )
    assert [(where(n), n.message, n.source_line) for n in d.notes] == [
        ((2, 11), "plots writes the directory 'reports/plots/' here", "    outs: reports/plots/")
    ]


def test_output_nested_deeply_inside_another_output_directory(tmp_path: Path) -> None:
    text = """
    stage outer:
        outs: out/
        run: r
    stage inner:
        outs: out/a/b/c.txt
        run: r
    """
    with pytest.raises(GraphError) as info:
        build(tmp_path, text)
    (d,) = info.value.diagnostics
    assert "of inner is inside output directory 'out/' of outer" in d.message


def test_output_inside_the_stages_own_output_directory(tmp_path: Path) -> None:
    with pytest.raises(GraphError) as info:
        build(tmp_path, "stage a:\n    outs: d/ d/e.txt\n    run: r\n")
    (d,) = info.value.diagnostics
    assert where(d) == (2, 14)
    assert d.message == "output 'd/e.txt' of a is inside its output directory 'd/'; list only the directory"


def test_sibling_output_with_a_common_prefix_is_not_nested(tmp_path: Path) -> None:
    text = """
    stage a:
        outs: out/
        run: r
    stage b:
        outs: out2/x.txt out-x.txt out.txt
        run: r
    """
    g = build(tmp_path, text)
    assert g.producer("out2/x.txt") == sid("b")
    assert g.producer("out/x.txt") == sid("a")
    assert g.producer("out.txt") == sid("b")


def test_graph_error_collects_every_problem_with_the_outputs_before_looking_for_cycles(tmp_path: Path) -> None:
    text = """
    stage a:
        outs: x.txt d/
        run: r
    stage b:
        outs: x.txt
        run: r
    stage c:
        deps: d/e.txt
        outs: d/e.txt
        run: r
    stage loop:
        deps: l.txt
        outs: l.txt
        run: r
    """
    with pytest.raises(GraphError) as info:
        build(tmp_path, text)
    assert not isinstance(info.value, CycleError)
    # c's output inside a's directory would also make c read a file a writes
    # into a loop of its own; that is not reported, nor are cycles until the outputs are right
    assert [(where(d), d.message.split(":")[0].split(",")[0]) for d in info.value.diagnostics] == [
        ((5, 11), "two stages write 'x.txt'"),
        ((9, 11), "output 'd/e.txt' of c is inside output directory 'd/' of a"),
    ]
    assert info.value.message == "2 errors in Pivotfile; fix the Pivotfile and run again"
    fixed = text.replace("outs: x.txt d/", "outs: x.txt").replace(
        "stage b:\n        outs: x.txt", "stage b:\n        outs: y.txt"
    )
    with pytest.raises(CycleError) as cycle:
        build(tmp_path, fixed)
    assert [where(d) for d in cycle.value.diagnostics] == [(7, 7), (11, 7)]


# -- how deps find their producers -------------------------------------------------------


def test_dep_inside_an_output_directory_orders_the_producer_first(tmp_path: Path) -> None:
    text = """
    stage use:
        deps: data/part-0001.csv
        outs: result.txt
        run: r
    stage split:
        outs: data/
        run: r
    """
    g = build(tmp_path, text)
    assert names(g.order()) == ["split", "use"]
    assert g.upstream_stages(sid("use")) == [sid("split")]
    assert g.producer("data/part-0001.csv") == sid("split")
    assert g.producer("data/deep/er/file") == sid("split")


def test_directory_dep_holding_outputs_orders_the_producers_first(tmp_path: Path) -> None:
    text = """
    stage report:
        deps: models/
        outs: report.txt
        run: r
    stage small:
        outs: models/small.pkl
        run: r
    stage large:
        outs: models/sub/large.pkl
        run: r
    stage unrelated:
        outs: modelsX/other.pkl model.pkl
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("report")) == [sid("small"), sid("large")]
    order = names(g.order())
    assert order.index("small") < order.index("report")
    assert order.index("large") < order.index("report")


def test_directory_dep_without_trailing_slash_holding_outputs(tmp_path: Path) -> None:
    text = """
    stage report:
        deps: models
        outs: report.txt
        run: r
    stage train:
        outs: models/a.pkl
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("report")) == [sid("train")]


def test_dep_that_only_shares_a_name_prefix_is_not_linked(tmp_path: Path) -> None:
    text = """
    stage use:
        deps: model
        outs: result.txt
        run: r
    stage train:
        outs: models/a.pkl model.pkl
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("use")) == []


def test_glob_dep_matching_outputs_orders_the_producers_first(tmp_path: Path) -> None:
    text = """
    stage report:
        deps: models/*.pkl
        outs: report.txt
        run: r
    stage small:
        outs: models/small.pkl
        run: r
    stage large:
        outs: models/large.pkl
        run: r
    stage other:
        outs: models/notes.txt models/deeper/x.pkl
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("report")) == [sid("small"), sid("large")]
    assert names(g.order()) == ["small", "large", "report", "other"]
    assert g.g.nodes["models/*.pkl"]["glob"] is True


def test_recursive_glob_dep_matching_outputs_at_any_depth(tmp_path: Path) -> None:
    text = """
    stage lint:
        deps: src/**/*.py
        run: ruff check src
    stage top:
        outs: src/top.py
        run: r
    stage deep:
        outs: src/a/b/deep.py
        run: r
    stage not_py:
        outs: src/a/data.csv
        run: r
    stage outside:
        outs: lib/x.py
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("lint")) == [sid("top"), sid("deep")]


def test_glob_dep_inside_an_output_directory_orders_the_producer_first(tmp_path: Path) -> None:
    text = """
    stage collect:
        deps: plots/*.png
        outs: index.html
        run: r
    stage plot:
        outs: plots/
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("collect")) == [sid("plot")]


@pytest.mark.parametrize(
    ("glob", "out_dir"),
    [("src/**/*.py", "src/gen/"), ("reports/*/summary.json", "reports/a/"), ("**/*.png", "plots/")],
)
def test_glob_dep_that_can_match_files_in_an_output_directory_orders_it_first(
    tmp_path: Path, glob: str, out_dir: str
) -> None:
    # `gen` writes a directory whose files match the glob (e.g. src/gen/x.py
    # matches src/**/*.py), so the stage reading the glob must run after it.
    text = f"""
    stage use:
        deps: {glob}
        run: r
    stage gen:
        outs: {out_dir}
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("use")) == [sid("gen")]
    assert names(g.order()) == ["gen", "use"]


def test_glob_dep_is_not_linked_to_an_unrelated_output_directory(tmp_path: Path) -> None:
    text = """
    stage use:
        deps: lib/**/*.py models/*.pkl
        run: r
    stage gen:
        outs: src/gen/ data/
        run: r
    """
    g = build(tmp_path, text)
    assert g.upstream_stages(sid("use")) == []


# -- queries ---------------------------------------------------------------------------


def test_producer(tmp_path: Path) -> None:
    g = build(tmp_path, CHAIN)
    assert g.producer("build/clean.csv") == sid("prepare")
    assert g.producer("models/model.pkl") == sid("train")
    assert g.producer("data/raw.csv") is None
    assert g.producer("nowhere") is None


def test_consumers_in_declaration_order(tmp_path: Path) -> None:
    g = build(tmp_path, CHAIN)
    assert g.consumers("build/clean.csv") == [sid("train"), sid("report")]
    assert g.consumers("models/model.pkl") == [sid("report")]
    assert g.consumers("reports/summary.json") == []
    assert g.consumers("not/in/graph") == []


def test_upstream_and_downstream(tmp_path: Path) -> None:
    text = (
        CHAIN
        + """
stage side:
    deps: data/raw.csv
    outs: side.txt
    run: r
"""
    )
    g = build(tmp_path, text)
    assert names(g.upstream([sid("report")])) == ["prepare", "train", "report"]
    assert names(g.upstream([sid("train")])) == ["prepare", "train"]
    assert names(g.upstream([sid("prepare")])) == ["prepare"]
    assert names(g.downstream([sid("prepare")])) == ["prepare", "train", "report"]
    assert names(g.downstream([sid("train")])) == ["train", "report"]
    assert names(g.downstream([sid("side")])) == ["side"]
    assert names(g.upstream([sid("side"), sid("train")])) == ["prepare", "train", "side"]


def test_upstream_stages_and_downstream_stages_are_direct_only(tmp_path: Path) -> None:
    g = build(tmp_path, CHAIN)
    assert g.upstream_stages(sid("report")) == [sid("prepare"), sid("train")]
    assert g.upstream_stages(sid("train")) == [sid("prepare")]
    assert g.upstream_stages(sid("prepare")) == []
    assert g.downstream_stages(sid("prepare")) == [sid("train"), sid("report")]
    assert g.downstream_stages(sid("report")) == []


def test_order_is_topological_with_ties_in_declaration_order(tmp_path: Path) -> None:
    text = """
    stage z_last:
        deps: b.txt a.txt
        run: r
    stage b:
        outs: b.txt
        run: r
    stage c_free:
        run: r
    stage a:
        outs: a.txt
        run: r
    """
    g = build(tmp_path, text)
    # z_last was declared first but needs b and a; the rest keep declaration order.
    assert names(g.order()) == ["b", "c_free", "a", "z_last"]


def test_order_is_deterministic(tmp_path: Path) -> None:
    stages = "\n".join(f"stage s{i}:\n    deps: in{i % 3}.txt\n    outs: out{i}.txt\n    run: r\n" for i in range(30))
    tail = "stage join:\n    deps: " + " ".join(f"out{i}.txt" for i in range(30)) + "\n    run: r\n"
    orders = {tuple(names(build(tmp_path, stages + tail).order())) for _ in range(5)}
    assert len(orders) == 1
    (order,) = orders
    assert list(order) == [f"s{i}" for i in range(30)] + ["join"]


def test_order_of_a_subset_keeps_build_order(tmp_path: Path) -> None:
    g = build(tmp_path, CHAIN)
    assert names(g.order([sid("report"), sid("prepare")])) == ["prepare", "report"]
    assert g.order([]) == []


def test_matrix_variants_are_ordered_after_their_input(tmp_path: Path) -> None:
    text = """
    stage train:
        matrix: model=small large
        deps: clean.csv
        outs: models/${model}.pkl
        run: r
    stage prepare:
        outs: clean.csv
        run: r
    """
    g = build(tmp_path, text)
    assert names(g.order()) == ["prepare", "train@small", "train@large"]


def test_missing_sources_names_dep_and_the_stages_needing_it(tmp_path: Path) -> None:
    text = """
    stage a:
        deps: data/raw.csv src/**/*.py present.txt
        outs: out/
        run: r
    stage b:
        deps: data/raw.csv out/part.csv *.cfg out/
        run: r
    stage c:
        deps: config.toml
        run: r
    """
    g = build(tmp_path, text)
    existing = {"present.txt"}
    missing = g.missing_sources(lambda p: p in existing)
    assert [m.path for m in missing] == ["config.toml", "data/raw.csv"]
    by_path = {m.path: m.needed_by for m in missing}
    assert by_path["data/raw.csv"] == (sid("a"), sid("b"))
    assert by_path["config.toml"] == (sid("c"),)


def test_missing_inputs_are_located_at_the_first_dep_naming_them_with_a_note_at_the_others(tmp_path: Path) -> None:
    text = """
    stage a:
        deps: present.txt data/raw.csv
        run: r
    stage b:
        matrix: k=1 2
        deps: data/raw.csv
        run: r
    stage c:
        deps: config.toml
        run: r
    """
    g = located(tmp_path, text)
    found = g.missing_inputs(lambda p: p == "present.txt")
    assert [(where(d), d.severity, d.message) for d in found] == [
        ((9, 11), "error", "'config.toml' does not exist and no stage writes it (needed by c)"),
        ((2, 23), "error", "'data/raw.csv' does not exist and no stage writes it (needed by a, b@1, b@2)"),
    ]
    assert found[1].source_line == "    deps: present.txt data/raw.csv"
    # b's two variants list it at one place: one note
    assert [(where(n), n.message) for n in found[1].notes] == [((6, 11), "b@1, b@2 need it too")]
    assert g.missing_inputs(lambda p: True) == []
    warnings = g.missing_inputs(lambda p: False, among=[sid("c")], severity="warning")
    assert [d.render().splitlines()[0] for d in warnings] == [
        "Pivotfile:9:11: warning: 'config.toml' does not exist and no stage writes it (needed by c)"
    ]


def test_missing_sources_asks_about_real_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.csv").write_text("x\n")
    g = build(tmp_path, CHAIN)
    missing = g.missing_sources(lambda p: os.path.lexists(tmp_path / p))
    assert [m.path for m in missing] == ["src/train.py"]
    assert missing[0].needed_by == (sid("train"),)


def test_missing_sources_excludes_globs_even_when_nothing_matches(tmp_path: Path) -> None:
    g = build(tmp_path, "stage lint:\n    deps: src/*.py lib/**/*.py\n    run: r\n")
    assert g.missing_sources(lambda p: False) == []


# -- glob semantics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "matches", "rejects"),
    [
        ("*.py", ["a.py", "setup.py"], ["d/a.py", "a.pyc", "a/b.py"]),
        ("src/*.py", ["src/a.py"], ["src/a/b.py", "src.py", "other/src/a.py"]),
        ("a?c", ["abc", "a.c"], ["a/c", "ac", "abbc"]),
        ("data/file-??.csv", ["data/file-01.csv"], ["data/file-1.csv", "data/file-0/.csv"]),
        ("src/**/*.py", ["src/a.py", "src/x/a.py", "src/x/y/z/a.py"], ["srca.py", "other/src/a.py", "src/a.txt"]),
        ("**/*.py", ["a.py", "d/a.py", "d/e/f/a.py"], ["a.txt", "d/a.txt"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["a/xb", "ab", "a/b/c"]),
        ("src/**", ["src/a", "src/a/b/c"], ["srcx", "lib/a"]),
        ("[ab].txt", ["a.txt", "b.txt"], ["c.txt", "ab.txt", ".txt"]),
        ("[!ab].txt", ["c.txt", "z.txt"], ["a.txt", "b.txt", "cc.txt"]),
        ("file[0-9].csv", ["file0.csv", "file9.csv"], ["filea.csv", "file10.csv"]),
        ("a+b(c).txt", ["a+b(c).txt"], ["aab(c).txt", "a+bc.txt"]),
        ("x.y", ["x.y"], ["xzy"]),
    ],
)
def test_glob_regex(pattern: str, matches: list[str], rejects: list[str]) -> None:
    rx = glob_regex(pattern)
    for path in matches:
        assert rx.fullmatch(path), f"{pattern!r} should match {path!r}"
    for path in rejects:
        assert not rx.fullmatch(path), f"{pattern!r} should not match {path!r}"


@pytest.mark.parametrize("pattern", ["x*y", "x?y", "x[!ab]y", "x[!a]y"])
def test_glob_wildcards_never_cross_a_slash(pattern: str) -> None:
    assert glob_regex(pattern).fullmatch("x/y") is None


def test_glob_double_star_matches_zero_directories_only_as_a_whole_component() -> None:
    rx = glob_regex("a/**/b.txt")
    assert rx.fullmatch("a/b.txt")
    assert not rx.fullmatch("a//b.txt")


# -- networkx only for cycles -----------------------------------------------------------


def test_a_first_build_orders_a_valid_graph_without_networkx_and_a_cycle_is_still_located(chain: Project) -> None:
    r = tracing.build(chain)  # no compiled plan yet: the Pivotfile is compiled and the graph validated
    assert r.parsed
    assert "networkx" not in r.imported
    assert sorted(runs(chain)) == ["a", "b", "c"]
    text = (chain.root / "Pivotfile").read_text()
    chain.pivotfile(text.replace("deps: in.txt", "deps: c.txt").replace("deps: other.txt", "deps: b.txt"))
    r = tracing.traced(chain)
    assert r.code == 2
    assert "Pivotfile:2:7: error: dependency cycle: a -> b -> c -> a (each stage writes" in r.err, r.err
    assert "Pivotfile:3:11: note: a reads 'c.txt', written by c" in r.err, r.err
