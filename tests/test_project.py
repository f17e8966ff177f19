"""load_project: the project root, path normalisation, includes, --all, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write

from pivotbuild.build.selection import open_graph
from pivotbuild.errors import GraphError, PivotfileError, ProjectError
from pivotbuild.model import StageId
from pivotbuild.project import LoadOptions, Project, load_project

SIMPLE = "stage hello:\n    outs: hello.txt\n    run: echo hi > $@\n"


def load(
    cwd: Path,
    file: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    all_pipelines: bool = False,
) -> Project:
    return load_project(LoadOptions(cwd, Path(file) if file is not None else None, overrides or {}, all_pipelines))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "proj"
    (r / ".pivot").mkdir(parents=True)
    return r


def stage_ids(project: Project) -> list[StageId]:
    return [s.id for s in project.stages]


def no_marker_above(path: Path) -> bool:
    return not any((d / m).is_dir() for d in [path, *path.parents] for m in (".pivot", ".git"))


# -- the project root ---------------------------------------------------------------------


def test_root_is_the_nearest_ancestor_with_pivot_dir(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / ".pivot").mkdir(parents=True)
    write(top, "a/b/Pivotfile", SIMPLE)
    project = load(top / "a" / "b")
    assert project.root == top.resolve()
    assert project.main is not None
    assert project.main.dir == "a/b"
    assert project.stages[0].outs[0].path == "a/b/hello.txt"


def test_root_is_the_nearest_pivot_dir_when_nested(tmp_path: Path) -> None:
    (tmp_path / "outer" / ".pivot").mkdir(parents=True)
    (tmp_path / "outer" / "inner" / ".pivot").mkdir(parents=True)
    write(tmp_path, "outer/inner/p/Pivotfile", SIMPLE)
    project = load(tmp_path / "outer" / "inner" / "p")
    assert project.root == (tmp_path / "outer" / "inner").resolve()


def test_root_falls_back_to_the_nearest_git_dir(tmp_path: Path) -> None:
    assert no_marker_above(tmp_path)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    write(repo, "pipelines/etl/Pivotfile", SIMPLE)
    project = load(repo / "pipelines" / "etl")
    assert project.root == repo.resolve()
    assert project.main is not None
    assert project.main.dir == "pipelines/etl"


def test_pivot_dir_wins_over_git_dir(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / ".pivot").mkdir(parents=True)
    (top / "inner" / ".git").mkdir(parents=True)
    write(top, "inner/Pivotfile", SIMPLE)
    project = load(top / "inner")
    assert project.root == top.resolve()


def test_root_falls_back_to_the_pivotfile_directory(tmp_path: Path) -> None:
    assert no_marker_above(tmp_path)
    write(tmp_path, "lonely/Pivotfile", SIMPLE)
    project = load(tmp_path / "lonely")
    assert project.root == (tmp_path / "lonely").resolve()
    assert project.main is not None
    assert project.main.dir == ""
    assert project.stages[0].outs[0].path == "hello.txt"


def test_marker_files_that_are_not_directories_are_ignored(tmp_path: Path) -> None:
    assert no_marker_above(tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / ".pivot").write_text("not a directory\n")
    write(tmp_path, "p/Pivotfile", SIMPLE)
    project = load(tmp_path / "p")
    assert project.root == (tmp_path / "p").resolve()


# -- paths --------------------------------------------------------------------------------------


def test_paths_are_normalised_to_the_root_for_a_pivotfile_in_a_subdirectory(root: Path) -> None:
    write(
        root,
        "pipes/etl/Pivotfile",
        """
        stage clean:
            desc: clean it
            deps: raw.csv ./in/../in/x.csv ../../shared/lookup.csv src/**/*.py
            outs: out/ build/clean.csv
            dir: work
            run: echo
        """,
    )
    project = load(root / "pipes" / "etl")
    assert project.root == root.resolve()
    assert project.cwd == (root / "pipes" / "etl").resolve()
    assert project.main is not None
    assert project.main.dir == "pipes/etl"
    assert project.main.file == "pipes/etl/Pivotfile"
    (stage,) = project.stages
    assert stage.id == StageId("pipes/etl", "clean")
    assert [d.path for d in stage.deps] == [
        "pipes/etl/raw.csv",
        "pipes/etl/in/x.csv",
        "shared/lookup.csv",
        "pipes/etl/src/**/*.py",
    ]
    assert [o.path for o in stage.outs] == ["pipes/etl/out", "pipes/etl/build/clean.csv"]
    assert stage.outs[0].is_dir
    assert stage.workdir == "pipes/etl/work"


def test_absolute_deps_inside_the_root_become_relative_and_others_stay_absolute(root: Path) -> None:
    inside = (root / "sub" / "data.csv").resolve()
    outside = (root.parent / "system.cfg").resolve()
    write(root, "sub/Pivotfile", f"stage s:\n    deps: {inside} {outside}\n    run: echo\n")
    (stage,) = load(root / "sub").stages
    assert [d.path for d in stage.deps] == ["sub/data.csv", outside.as_posix()]


def test_pipeline_name_defaults_to_the_directory_name(root: Path) -> None:
    write(root, "etl/Pivotfile", SIMPLE)
    write(root, "named/Pivotfile", "pipeline special\n" + SIMPLE)
    assert load(root / "etl").main.name == "etl"  # type: ignore[union-attr]
    assert load(root / "named").main.name == "special"  # type: ignore[union-attr]


def test_overrides_apply_to_the_pipeline(root: Path) -> None:
    write(root, "Pivotfile", "OUT = a.txt\nstage s:\n    outs: ${OUT}\n    run: echo\n")
    assert load(root).stages[0].outs[0].path == "a.txt"
    assert load(root, overrides={"OUT": "b.txt"}).stages[0].outs[0].path == "b.txt"


# -- includes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["sub/", "sub", "sub/Pivotfile", "./sub/../sub/"])
def test_include_joins_the_sub_pipeline(root: Path, written: str) -> None:
    write(
        root,
        "Pivotfile",
        f"""
        include {written}
        stage report:
            deps: sub/model.pkl
            outs: report.txt
            run: echo
        """,
    )
    write(
        root,
        "sub/Pivotfile",
        """
        stage train:
            deps: data.csv
            outs: model.pkl
            run: echo
        """,
    )
    project = load(root)
    assert [p.dir for p in project.pipelines] == ["", "sub"]
    assert stage_ids(project) == [StageId("", "report"), StageId("sub", "train")]
    train = project.stages[1]
    assert train.id.pipeline == "sub"
    assert [d.path for d in train.deps] == ["sub/data.csv"]
    assert [o.path for o in train.outs] == ["sub/model.pkl"]
    g = open_graph(project)
    # declared later, but the main pipeline reads its output: it builds first
    assert g.order() == [StageId("sub", "train"), StageId("", "report")]
    assert g.label(StageId("sub", "train")) == "sub:train"


def test_include_of_a_file_with_another_name(root: Path) -> None:
    write(root, "Pivotfile", "include extra/build.pivot\n" + SIMPLE)
    write(root, "extra/build.pivot", "stage more:\n    outs: more.txt\n    run: echo\n")
    project = load(root)
    assert stage_ids(project) == [StageId("", "hello"), StageId("extra", "more")]
    assert project.stages[1].outs[0].path == "extra/more.txt"


def test_nested_includes_are_followed(root: Path) -> None:
    write(root, "Pivotfile", "include a/\n" + SIMPLE)
    write(root, "a/Pivotfile", "include b/\nstage s:\n    run: echo\n")
    write(root, "a/b/Pivotfile", "stage t:\n    run: echo\n")
    project = load(root)
    assert [p.dir for p in project.pipelines] == ["", "a", "a/b"]
    assert StageId("a/b", "t") in stage_ids(project)


def test_include_of_a_missing_path_is_a_located_error(root: Path) -> None:
    write(root, "Pivotfile", "# pipelines\ninclude  nowhere/\n" + SIMPLE)
    with pytest.raises(PivotfileError) as info:
        load(root)
    (diag,) = info.value.diagnostics
    assert (diag.loc.path, diag.loc.line, diag.loc.col) == ("Pivotfile", 2, 10)
    assert "nowhere" in diag.message
    assert diag.source_line == "include  nowhere/"
    assert info.value.render().splitlines()[0].startswith("Pivotfile:2:10: error: ")


def test_include_of_a_directory_without_a_pivotfile_is_a_located_error(root: Path) -> None:
    (root / "empty").mkdir()
    write(root, "Pivotfile", "include empty/\n" + SIMPLE)
    with pytest.raises(PivotfileError) as info:
        load(root)
    (diag,) = info.value.diagnostics
    assert (diag.loc.line, diag.loc.col) == (1, 9)
    assert "empty" in diag.message


def test_include_outside_the_root_is_a_located_error(root: Path) -> None:
    write(root.parent, "elsewhere/Pivotfile", SIMPLE)
    write(root, "Pivotfile", "include ../elsewhere/\nstage s:\n    run: echo\n")
    with pytest.raises(PivotfileError) as info:
        load(root)
    (diag,) = info.value.diagnostics
    assert diag.loc.line == 1
    assert "outside the project root" in diag.message


def test_every_bad_include_is_reported(root: Path) -> None:
    write(root, "Pivotfile", "include a/ b/\ninclude c/\n" + SIMPLE)
    with pytest.raises(PivotfileError) as info:
        load(root)
    assert [(d.loc.line, d.loc.col) for d in info.value.diagnostics] == [(1, 9), (1, 12), (2, 9)]


def test_include_cycle_terminates_and_loads_each_pipeline_once(root: Path) -> None:
    write(root, "Pivotfile", "include a/\nstage top:\n    outs: top.txt\n    run: echo\n")
    write(root, "a/Pivotfile", "include ../b\nstage sa:\n    outs: a.txt\n    run: echo\n")
    write(root, "b/Pivotfile", "include ..\ninclude ../a/Pivotfile\nstage sb:\n    outs: b.txt\n    run: echo\n")
    project = load(root)
    assert [p.dir for p in project.pipelines] == ["", "a", "b"]
    open_graph(project)  # no stage twice, so no duplicate outputs


def test_self_include_terminates(root: Path) -> None:
    write(root, "Pivotfile", "include .\ninclude Pivotfile\n" + SIMPLE)
    project = load(root)
    assert stage_ids(project) == [StageId("", "hello")]


def test_diamond_include_loads_the_shared_pipeline_once(root: Path) -> None:
    write(root, "Pivotfile", "include a/ b/\nstage top:\n    run: echo\n")
    write(root, "a/Pivotfile", "include ../shared\nstage sa:\n    run: echo\n")
    write(root, "b/Pivotfile", "include ../shared\nstage sb:\n    run: echo\n")
    write(root, "shared/Pivotfile", "stage make:\n    outs: lib.a\n    run: echo\n")
    project = load(root)
    assert [p.dir for p in project.pipelines] == ["", "a", "shared", "b"]
    graph = open_graph(project)
    assert graph.producer("shared/lib.a") == StageId("shared", "make")


def test_diamond_include_of_a_broken_pipeline_reports_each_error_once(root: Path) -> None:
    write(root, "Pivotfile", "include a/ b/\nstage top:\n    run: echo\n")
    write(root, "a/Pivotfile", "include ../shared\nstage sa:\n    run: echo\n")
    write(root, "b/Pivotfile", "include ../shared\nstage sb:\n    run: echo\n")
    write(root, "shared/Pivotfile", "stage make:\n    bogus: 1\n    run: echo\n")
    with pytest.raises(PivotfileError) as info:
        load(root)
    assert [(d.loc.path, d.loc.line) for d in info.value.diagnostics] == [("shared/Pivotfile", 2)]


def test_duplicate_outputs_across_pipelines_name_both_stages(root: Path) -> None:
    write(root, "Pivotfile", "include sub/\nstage a:\n    outs: sub/x.txt\n    run: echo\n")
    write(root, "sub/Pivotfile", "stage b:\n    outs: x.txt\n    run: echo\n")
    project = load(root)
    with pytest.raises(GraphError) as info:
        open_graph(project)
    (d,) = info.value.diagnostics
    assert (d.loc.path, d.loc.line, d.loc.col) == ("sub/Pivotfile", 2, 11)
    assert d.message.startswith("two stages write 'sub/x.txt': a and sub:b;")
    assert d.source_line == "    outs: x.txt"
    assert [(n.loc.path, n.loc.line, n.loc.col, n.source_line) for n in d.notes] == [
        ("Pivotfile", 3, 11, "    outs: sub/x.txt")
    ]


# -- --all ----------------------------------------------------------------------------------------


def test_all_finds_every_pivotfile_under_the_root_skipping_hidden_dirs(root: Path) -> None:
    write(root, "Pivotfile", SIMPLE)
    write(root, "a/Pivotfile", "stage sa:\n    run: echo\n")
    write(root, "a/deep/er/Pivotfile", "stage sd:\n    run: echo\n")
    write(root, "z/Pivotfile", "stage sz:\n    run: echo\n")
    broken = "stage broken:\n    nonsense: yes\n"
    write(root, ".hidden/Pivotfile", broken)
    write(root, ".pivot/Pivotfile", broken)
    write(root, ".git/Pivotfile", broken)
    write(root, "a/.cache/Pivotfile", broken)
    project = load(root, all_pipelines=True)
    assert sorted(p.dir for p in project.pipelines) == ["", "a", "a/deep/er", "z"]
    assert project.main is not None
    assert project.main.dir == ""


def test_all_leaves_out_a_project_of_its_own_below_the_root(root: Path) -> None:
    write(root, "Pivotfile", SIMPLE)
    write(root, "own/Pivotfile", "stage so:\n    run: echo\n")
    write(root, "own/deeper/Pivotfile", "stage sd:\n    run: echo\n")
    write(root, "part/Pivotfile", "stage sp:\n    run: echo\n")
    (root / "own/.pivot").mkdir()  # `pivotbuild init` made it a root
    (root / "part/.pivot").mkdir()
    (root / "part/.pivot/pipeline-state").write_text("")  # an included pipeline's own state
    assert sorted(p.dir for p in load(root, all_pipelines=True).pipelines) == ["", "part"]


def test_all_without_all_only_loads_the_main_pipeline(root: Path) -> None:
    write(root, "Pivotfile", SIMPLE)
    write(root, "a/Pivotfile", "stage sa:\n    run: echo\n")
    assert [p.dir for p in load(root).pipelines] == [""]


def test_all_from_a_directory_without_a_pivotfile(root: Path) -> None:
    (root / "docs").mkdir()
    write(root, "a/Pivotfile", "stage sa:\n    run: echo\n")
    write(root, "b/Pivotfile", "stage sb:\n    run: echo\n")
    project = load(root / "docs", all_pipelines=True)
    assert project.main is None
    assert project.current_dir == ""
    assert sorted(p.dir for p in project.pipelines) == ["a", "b"]


def test_all_loads_an_included_pipeline_once(root: Path) -> None:
    write(root, "Pivotfile", "include sub/\n" + SIMPLE)
    write(root, "sub/Pivotfile", "stage s:\n    outs: s.txt\n    run: echo\n")
    project = load(root, all_pipelines=True)
    assert [p.dir for p in project.pipelines] == ["", "sub"]
    open_graph(project)


def test_all_with_a_broken_main_pivotfile_reports_each_error_once(root: Path) -> None:
    write(root, "Pivotfile", "stage a:\n    bogus: 1\n    run: echo\n")
    with pytest.raises(PivotfileError) as info:
        load(root, all_pipelines=True)
    assert [(d.loc.path, d.loc.line) for d in info.value.diagnostics] == [("Pivotfile", 2)]


# -- errors across files -------------------------------------------------------------------------


def test_errors_in_two_included_pivotfiles_are_reported_together(root: Path) -> None:
    write(root, "Pivotfile", "include a/ b/\nstage top:\n    run: echo\n")
    write(root, "a/Pivotfile", "stage sa:\n    dpes: x\n    run: echo\n")
    write(root, "b/Pivotfile", "stage sb:\n    run: echo ${UNDEFINED}\n")
    with pytest.raises(PivotfileError) as info:
        load(root)
    diags = info.value.diagnostics
    assert [(d.loc.path, d.loc.line) for d in diags] == [("a/Pivotfile", 2), ("b/Pivotfile", 2)]
    assert "2 errors in a/Pivotfile, b/Pivotfile" in info.value.message
    rendered = info.value.render()
    assert "a/Pivotfile:2:5: error: " in rendered
    assert "b/Pivotfile:2:" in rendered


def test_errors_in_two_pivotfiles_found_by_all_are_reported_together(root: Path) -> None:
    write(root, "Pivotfile", "stage top:\n    run: echo ${NOPE}\n")
    write(root, "sub/Pivotfile", "stage s:\n    outs: x\n")
    with pytest.raises(PivotfileError) as info:
        load(root, all_pipelines=True)
    assert sorted({d.loc.path for d in info.value.diagnostics}) == ["Pivotfile", "sub/Pivotfile"]


def test_error_paths_are_shown_relative_to_the_working_directory(root: Path) -> None:
    write(root, "Pivotfile", "include sub/\nstage top:\n    run: echo\n")
    write(root, "sub/Pivotfile", "include ..\nstage s:\n    outs: x\n")
    with pytest.raises(PivotfileError) as info:
        load(root)
    assert [d.loc.path for d in info.value.diagnostics] == ["sub/Pivotfile"]
    with pytest.raises(PivotfileError) as info:
        load(root / "sub")
    assert [d.loc.path for d in info.value.diagnostics] == ["Pivotfile"]


# -- finding the Pivotfile ------------------------------------------------------------------------


def test_missing_pivotfile_is_a_project_error(root: Path) -> None:
    with pytest.raises(ProjectError) as info:
        load(root)
    assert "no Pivotfile" in info.value.message
    assert info.value.exit_code == 2


def test_pivotfile_is_not_searched_for_in_parent_directories(root: Path) -> None:
    write(root, "Pivotfile", SIMPLE)
    (root / "src").mkdir()
    with pytest.raises(ProjectError):
        load(root / "src")


def test_file_option_pointing_at_a_directory(root: Path) -> None:
    write(root, "sub/Pivotfile", SIMPLE)
    project = load(root, file="sub")
    assert project.main is not None
    assert project.main.dir == "sub"
    assert project.cwd == root.resolve()
    assert stage_ids(project) == [StageId("sub", "hello")]


def test_file_option_pointing_at_a_file(root: Path) -> None:
    write(root, "ci/build.pivot", SIMPLE)
    project = load(root, file="ci/build.pivot")
    assert project.main is not None
    assert project.main.dir == "ci"
    assert project.stages[0].outs[0].path == "ci/hello.txt"


def test_file_option_is_relative_to_cwd_and_may_be_absolute(root: Path) -> None:
    path = write(root, "Pivotfile", SIMPLE)
    (root / "deep" / "er").mkdir(parents=True)
    assert stage_ids(load(root / "deep" / "er", file="../../Pivotfile")) == [StageId("", "hello")]
    assert stage_ids(load(root / "deep", file=path)) == [StageId("", "hello")]


@pytest.mark.parametrize("given", ["nope", "nope/Pivotfile", "emptydir"])
def test_file_option_pointing_at_nothing_is_a_project_error(root: Path, given: str) -> None:
    (root / "emptydir").mkdir()
    with pytest.raises(ProjectError) as info:
        load(root, file=given)
    assert given in info.value.message
