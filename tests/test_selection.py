"""Targets: BuildGraph.select and selection.selected (targets, else `default`, else all)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compile_text
from helpers import sid, write

from pivotbuild.build.selection import open_graph, selected
from pivotbuild.errors import PivotfileError, TargetError
from pivotbuild.graph import BuildGraph
from pivotbuild.model import StageId
from pivotbuild.project import LoadOptions, Project, load_project
from pivotbuild.state import plan

PIPELINE = """
stage prepare:
    deps: data/raw.csv
    outs: build/clean.csv
    run: cp $< $@

stage train:
    matrix: model=small large lr=0.1 0.01
    deps: build/clean.csv
    outs: models/${model}-${lr}.pkl
    run: python train.py

stage report:
    deps: models/
    outs: reports/summary.json reports/plots/
    run: python report.py

stage trainer:
    outs: trainer.txt
    run: echo
"""

VARIANTS = ["train@small-0.1", "train@small-0.01", "train@large-0.1", "train@large-0.01"]


def names(ids: list[StageId]) -> list[str]:
    return [s.label() for s in ids]


@pytest.fixture
def graph(tmp_path: Path) -> BuildGraph:
    return BuildGraph(compile_text(PIPELINE, tmp_path).stages)


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / ".pivot").mkdir(parents=True)
    return root


def load(root: Path, cwd: Path | None = None, file: str | None = None, all_pipelines: bool = False) -> Project:
    return load_project(LoadOptions(cwd or root, Path(file) if file else None, {}, all_pipelines))


# -- BuildGraph.select -----------------------------------------------------------------


def test_select_stage_name(graph: BuildGraph) -> None:
    assert graph.select(["prepare"]) == [sid("prepare")]
    assert graph.select(["report"]) == [sid("report")]


def test_select_matrix_variant(graph: BuildGraph) -> None:
    assert graph.select(["train@large-0.01"]) == [sid("train@large-0.01")]


def test_select_matrix_base_selects_every_variant_in_declaration_order(graph: BuildGraph) -> None:
    assert names(graph.select(["train"])) == VARIANTS


def test_matrix_base_does_not_select_stages_sharing_its_prefix(graph: BuildGraph) -> None:
    assert "trainer" not in names(graph.select(["train"]))


def test_select_shell_pattern(graph: BuildGraph) -> None:
    assert names(graph.select(["train@*"])) == VARIANTS
    assert names(graph.select(["train@small-*"])) == ["train@small-0.1", "train@small-0.01"]
    assert names(graph.select(["train@*-0.1"])) == ["train@small-0.1", "train@large-0.1"]
    assert names(graph.select(["train*"])) == [*VARIANTS, "trainer"]
    assert names(graph.select(["re?ort"])) == ["report"]
    assert names(graph.select(["[pr]*"])) == ["prepare", "report"]


def test_select_keeps_first_named_order_without_duplicates(graph: BuildGraph) -> None:
    assert names(graph.select(["report", "prepare", "report", "prepare"])) == ["report", "prepare"]
    assert names(graph.select(["train@large-0.1", "train"])) == [
        "train@large-0.1",
        "train@small-0.1",
        "train@small-0.01",
        "train@large-0.01",
    ]


def test_select_output_path(graph: BuildGraph) -> None:
    assert graph.select(["build/clean.csv"]) == [sid("prepare")]
    assert graph.select(["models/large-0.1.pkl"]) == [sid("train@large-0.1")]
    assert graph.select(["./build/clean.csv"]) == [sid("prepare")]
    assert graph.select(["build//clean.csv"]) == [sid("prepare")]


def test_select_output_path_relative_to_cwd(graph: BuildGraph) -> None:
    assert graph.select(["clean.csv"], cwd="build") == [sid("prepare")]
    assert graph.select(["../build/clean.csv"], cwd="models") == [sid("prepare")]
    assert graph.select(["small-0.1.pkl"], cwd="models") == [sid("train@small-0.1")]
    with pytest.raises(TargetError):
        graph.select(["clean.csv"])  # not relative to the root


def test_select_file_inside_an_output_directory(graph: BuildGraph) -> None:
    assert graph.select(["reports/plots/loss.png"]) == [sid("report")]
    assert graph.select(["reports/plots/deep/er.svg"]) == [sid("report")]
    assert graph.select(["plots/loss.png"], cwd="reports") == [sid("report")]


def test_select_directory_holding_outputs(graph: BuildGraph) -> None:
    assert names(graph.select(["models"])) == VARIANTS
    assert names(graph.select(["models/"])) == VARIANTS
    assert names(graph.select(["build"])) == ["prepare"]
    assert names(graph.select(["reports"])) == ["report"]
    assert names(graph.select(["."], cwd="models")) == VARIANTS


def test_select_a_stage_name_wins_over_a_path(tmp_path: Path) -> None:
    text = """
    stage report:
        outs: out.txt
        run: r
    stage writer:
        outs: report
        run: r
    """
    g = BuildGraph(compile_text(text, tmp_path).stages)
    assert g.select(["report"]) == [sid("report")]
    assert g.select(["./report"]) == [sid("writer")]


def test_unknown_target_suggests_close_names(graph: BuildGraph) -> None:
    with pytest.raises(TargetError) as info:
        graph.select(["trian"])
    assert "unknown target 'trian'" in info.value.message
    assert "did you mean 'train'" in info.value.message
    assert info.value.exit_code == 2


def test_unknown_target_suggests_an_output_path(graph: BuildGraph) -> None:
    with pytest.raises(TargetError) as info:
        graph.select(["build/clean.cvs"])
    assert "build/clean.csv" in info.value.message


def test_unknown_target_with_nothing_close(graph: BuildGraph) -> None:
    with pytest.raises(TargetError) as info:
        graph.select(["zzzzzzzz"])
    assert "unknown target 'zzzzzzzz'" in info.value.message
    assert "did you mean" not in info.value.message


def test_pattern_matching_nothing_is_an_error(graph: BuildGraph) -> None:
    with pytest.raises(TargetError) as info:
        graph.select(["deploy@*"])
    assert "deploy@*" in info.value.message
    assert "matches no stage" in info.value.message


def test_one_bad_target_among_good_ones_fails(graph: BuildGraph) -> None:
    with pytest.raises(TargetError) as info:
        graph.select(["prepare", "nope"])
    assert "'nope'" in info.value.message


# -- other pipelines ----------------------------------------------------------------------


def multi_pipeline(tmp_path: Path) -> Path:
    root = make_root(tmp_path)
    write(
        root,
        "Pivotfile",
        """
        include sub/
        stage prepare:
            outs: clean.csv
            run: echo
        stage use:
            deps: sub/model.pkl
            run: echo
        """,
    )
    write(
        root,
        "sub/Pivotfile",
        """
        stage train:
            matrix: size=small big
            deps: ../clean.csv
            outs: model-${size}.pkl
            run: echo
        stage pack:
            deps: model-small.pkl model-big.pkl
            outs: model.pkl
            run: echo
        """,
    )
    return root


def test_qualified_name_selects_a_stage_of_another_pipeline(tmp_path: Path) -> None:
    root = multi_pipeline(tmp_path)
    project = load(root)
    g = open_graph(project)
    assert g.select(["sub:pack"]) == [sid("pack", "sub")]
    assert g.select(["sub:train@big"]) == [sid("train@big", "sub")]
    assert g.select(["sub:train"]) == [sid("train@small", "sub"), sid("train@big", "sub")]
    assert g.select(["sub:train@*"]) == [sid("train@small", "sub"), sid("train@big", "sub")]
    assert g.select(["sub/model.pkl"]) == [sid("pack", "sub")]
    assert g.select(["prepare"]) == [sid("prepare")]
    assert g.select([".:prepare"]) == [sid("prepare")]


def test_stage_of_another_pipeline_needs_its_prefix(tmp_path: Path) -> None:
    root = multi_pipeline(tmp_path)
    g = open_graph(load(root))
    with pytest.raises(TargetError) as info:
        g.select(["pack"])
    assert "sub:pack" in info.value.message


def test_unknown_qualified_target_suggests_the_qualified_name(tmp_path: Path) -> None:
    root = multi_pipeline(tmp_path)
    g = open_graph(load(root))
    with pytest.raises(TargetError) as info:
        g.select(["sub:trian"])
    assert "did you mean 'sub:train'" in info.value.message


def test_names_are_relative_to_the_current_pipeline(tmp_path: Path) -> None:
    root = multi_pipeline(tmp_path)
    project = load(root, cwd=root / "sub", all_pipelines=True)
    assert project.current_dir == "sub"
    g = open_graph(project)
    assert g.select(["pack"]) == [sid("pack", "sub")]
    assert g.select(["train"]) == [sid("train@small", "sub"), sid("train@big", "sub")]
    assert g.select([".:prepare"]) == [sid("prepare")]
    assert g.label(sid("prepare")) == ".:prepare"
    assert g.label(sid("pack", "sub")) == "pack"
    assert selected(project, g, ["model.pkl"]) == [sid("pack", "sub")]
    assert selected(project, g, ["../clean.csv"]) == [sid("prepare")]


def test_same_stage_name_in_two_pipelines(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", "include a/\nstage build:\n    outs: top.txt\n    run: echo\n")
    write(root, "a/Pivotfile", "stage build:\n    outs: a.txt\n    run: echo\n")
    g = open_graph(load(root))
    assert g.select(["build"]) == [sid("build")]
    assert g.select(["a:build"]) == [sid("build", "a")]
    assert g.select(["*build"]) == [sid("build"), sid("build", "a")]


# -- selection.selected ------------------------------------------------------------------


def test_selected_returns_build_order(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", PIPELINE)
    project = load(root)
    g = open_graph(project)
    assert names(selected(project, g, ["report", "prepare"])) == ["prepare", "report"]


def test_selected_paths_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", PIPELINE)
    (root / "models").mkdir()
    project = load(root, cwd=root / "models", file="../Pivotfile")
    g = open_graph(project)
    assert names(selected(project, g, ["small-0.1.pkl"])) == ["train@small-0.1"]
    assert names(selected(project, g, ["../build/clean.csv"])) == ["prepare"]


def test_no_default_selects_every_stage(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", PIPELINE)
    project = load(root)
    g = open_graph(project)
    assert names(selected(project, g, [])) == ["prepare", *VARIANTS, "report", "trainer"]


def test_no_default_selects_included_pipelines_too(tmp_path: Path) -> None:
    root = multi_pipeline(tmp_path)
    project = load(root)
    g = open_graph(project)
    assert set(selected(project, g, [])) == set(g.stages)
    assert len(g.stages) == 5


def test_default_statement_is_used_without_targets(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", "default report trainer\n" + PIPELINE)
    project = load(root)
    g = open_graph(project)
    assert names(selected(project, g, [])) == ["report", "trainer"]
    # targets on the command line replace the default
    assert names(selected(project, g, ["prepare"])) == ["prepare"]


def test_default_accepts_every_kind_of_target(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", "TARGET = trainer\ndefault 'train@small-*' build/clean.csv ${TARGET}\n" + PIPELINE)
    project = load(root)
    g = open_graph(project)
    assert names(selected(project, g, [])) == ["prepare", "train@small-0.1", "train@small-0.01", "trainer"]


def test_default_paths_are_relative_to_the_pipeline_directory(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", "stage top:\n    outs: top.txt\n    run: echo\n")
    write(
        root,
        "sub/Pivotfile",
        "include ..\ndefault out.txt\nstage a:\n    outs: out.txt\n    run: echo\nstage b:\n    run: echo\n",
    )
    project = load(root, cwd=root / "sub")
    g = open_graph(project)
    assert selected(project, g, []) == [sid("a", "sub")]


def test_bad_default_target_is_located_at_the_default_line(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(
        root,
        "Pivotfile",
        """
        # the default build
        default report repotr
        stage report:
            outs: report.txt
            run: echo
        """,
    )
    project = load(root)
    g = open_graph(project)
    with pytest.raises(PivotfileError) as info:
        selected(project, g, [])
    (diag,) = info.value.diagnostics
    assert diag.loc.path == "Pivotfile"
    assert diag.loc.line == 2
    assert diag.loc.col == 16
    assert diag.source_line == "default report repotr"
    assert "repotr" in diag.message
    assert "did you mean 'report'" in diag.message
    rendered = info.value.render()
    assert rendered.startswith("Pivotfile:2:16: error: ")
    assert rendered.splitlines()[-1] == "    " + " " * 15 + "^"


def test_every_bad_default_target_is_reported(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", "default nope 'x@*'\nstage a:\n    run: echo\n")
    project = load(root)
    g = open_graph(project)
    with pytest.raises(PivotfileError) as info:
        selected(project, g, [])
    assert [(d.loc.line, d.loc.col) for d in info.value.diagnostics] == [(1, 9), (1, 14)]


def test_bad_default_is_not_checked_when_targets_are_given(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write(root, "Pivotfile", "default nope\nstage a:\n    run: echo\n")
    project = load(root)
    g = open_graph(project)
    assert selected(project, g, ["a"]) == [sid("a")]


@pytest.mark.parametrize("where", ["", "sub"])
def test_the_compiled_plans_index_selects_names_as_the_graph_does(tmp_path: Path, where: str) -> None:
    """The fast path selects over the plan's index; a name must mean there
    what it means to the graph, and what only the graph resolves (patterns,
    paths, unknown names) the index leaves to it."""
    root = multi_pipeline(tmp_path)
    project = load(root, cwd=root / where, all_pipelines=True)
    g = open_graph(project)
    main_file = root / where / "Pivotfile"
    assert plan.save(project, g, main_file, {})
    loaded = plan.read(main_file, {})
    assert loaded is not None
    ids = list(g.stages)
    qualified = [f"{s.pipeline or '.'}:{s.name}" for s in ids] + ["sub:train", ".:prepare"]
    plain = [s.name for s in ids if s.pipeline == project.current_dir] + ["train"]
    for target in qualified + plain:
        try:
            expected = g.select([target])
        except TargetError:
            expected = None
        chosen = loaded.index.select([target])
        assert (chosen if chosen is None else [ids[i] for i in chosen]) == expected, target
    assert loaded.index.select(["sub:train", "prepare"] if not where else ["train", ".:prepare"]) is not None
    for target in ("sub:train@*", "sub/model.pkl", "nonesuch"):
        assert loaded.index.select([target]) is None
