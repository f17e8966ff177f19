"""The project a long-lived engine holds (build/session.py), in real temporary
projects: loaded once, reloaded when a Pivotfile or params file changes, the
last good graph kept while the new files do not load."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project

import pivotbuild.project
from pivotbuild.build import load
from pivotbuild.build.session import LoadedProject
from pivotbuild.errors import CycleError, PivotfileError, ProjectError
from pivotbuild.model import StageId
from pivotbuild.project import LoadOptions

CHAIN = """
stage a:
    deps: in.txt
    outs: a.txt
    run: cp $< $@

stage b:
    deps: a.txt
    outs: b.txt
    run: cp $< $@
"""


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directory of each compile of the Pivotfiles (not counting plans restored)."""
    seen: list[Path] = []

    def counted(options: LoadOptions) -> pivotbuild.project.Project:
        seen.append(options.cwd)
        return pivotbuild.project.load_project(options)

    monkeypatch.setattr(load, "load_project", counted)
    return seen


def holder(p: Project, all_pipelines: bool = False) -> LoadedProject:
    warnings: list[str] = []
    loaded = LoadedProject(LoadOptions(p.root, all_pipelines=all_pipelines), warnings.append)
    loaded.current()
    assert warnings == []
    return loaded


def names(ids: tuple[StageId, ...]) -> list[str]:
    return [sid.label() for sid in ids]


def test_loads_once_and_serves_the_same_objects(project: Project, compiles: list[Path]) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project)
    first = loaded.current()
    assert loaded.current() is first
    assert not loaded.changed()
    assert not loaded.reload().loaded
    assert loaded.current() is first
    assert len(compiles) == 1


def test_a_second_holder_restores_the_compiled_plan(project: Project, compiles: list[Path]) -> None:
    project.pivotfile(CHAIN)
    holder(project)
    again = holder(project)
    assert list(again.current()[1].stages) == [StageId("", "a"), StageId("", "b")]
    assert len(compiles) == 1


def test_preloaded_project_is_served_without_loading(project: Project, compiles: list[Path]) -> None:
    project.pivotfile(CHAIN)
    first = holder(project).current()
    loaded = LoadedProject(LoadOptions(project.root), print, preloaded=first)
    assert loaded.current() is first
    assert not loaded.changed()
    assert len(compiles) == 1


def test_an_edited_pivotfile_is_reloaded(project: Project) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project)
    edited = CHAIN.replace("cp $< $@\n", "cat $< > $@\n", 1)
    project.pivotfile(edited + "\nstage c:\n    outs: c.txt\n    run: touch $@\n")
    assert loaded.changed()
    reloaded = loaded.reload()
    assert (reloaded.loaded, reloaded.error) == (True, None)
    assert (names(reloaded.added), names(reloaded.removed), names(reloaded.redefined)) == (["c"], [], ["a"])
    assert list(loaded.current()[1].stages) == [StageId("", "a"), StageId("", "b"), StageId("", "c")]
    assert not loaded.changed()


def test_a_removed_stage_is_reported(project: Project) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project)
    project.pivotfile(CHAIN.partition("stage b:")[0])
    reloaded = loaded.reload()
    assert (names(reloaded.added), names(reloaded.removed), names(reloaded.redefined)) == ([], ["b"], [])


def test_moving_a_stage_in_its_file_does_not_redefine_it(project: Project) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project)
    project.pivotfile("# the chain, commented\n" + CHAIN)
    reloaded = loaded.reload()
    assert reloaded.loaded and not reloaded.stages_changed
    assert loaded.current()[1].stages[StageId("", "b")].loc.line == 8  # the new graph, with the new lines


def test_a_broken_pivotfile_keeps_the_last_good_graph_until_fixed(project: Project, compiles: list[Path]) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project)
    good = loaded.current()
    project.pivotfile(CHAIN + "\nstage c:\n    dpes: x\n    run: true\n")
    reloaded = loaded.reload()
    assert isinstance(reloaded.error, PivotfileError) and not reloaded.loaded
    [diag] = reloaded.error.diagnostics
    assert (diag.loc.path, diag.loc.line, "dpes" in diag.message) == ("Pivotfile", 12, True), diag.render()
    assert loaded.current() is good
    # The broken file is not compiled again until it changes again.
    assert not loaded.changed()
    assert loaded.reload() == type(reloaded)()
    assert len(compiles) == 2
    project.pivotfile(CHAIN + "\nstage c:\n    deps: a.txt\n    outs: c.txt\n    run: cp $< $@\n")
    fixed = loaded.reload()
    assert fixed.error is None and names(fixed.added) == ["c"]
    assert StageId("", "c") in loaded.current()[1].stages


def test_a_graph_error_keeps_the_last_good_graph(project: Project) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project)
    good = loaded.current()
    project.pivotfile(CHAIN.replace("deps: in.txt", "deps: b.txt"))
    reloaded = loaded.reload()
    assert isinstance(reloaded.error, CycleError)
    assert loaded.current() is good


def test_a_deleted_pivotfile_keeps_the_last_good_graph(project: Project) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project)
    good = loaded.current()
    (project.root / "Pivotfile").unlink()
    reloaded = loaded.reload()
    assert isinstance(reloaded.error, ProjectError) and "no Pivotfile" in reloaded.error.message
    assert loaded.current() is good
    project.pivotfile(CHAIN)
    assert loaded.reload().loaded


def test_an_edited_params_file_is_reloaded(project: Project) -> None:
    project.write("params.toml", "[train]\nepochs = 3\n")
    project.pivotfile(CHAIN + "\nstage train:\n    params: train.epochs\n    outs: m.txt\n    run: echo > $@\n")
    loaded = holder(project)
    project.write("params.toml", "[train]\nepochs = 4\n")
    assert loaded.changed()
    reloaded = loaded.reload()
    assert names(reloaded.redefined) == ["train"]
    assert loaded.current()[1].stages[StageId("", "train")].params[0].value_json == "4"


def test_an_edited_included_pipeline_is_reloaded(project: Project) -> None:
    project.pivotfile("include sub/\n" + CHAIN)
    project.pivotfile("stage s:\n    outs: s.txt\n    run: touch $@\n", "sub/Pivotfile")
    loaded = holder(project)
    project.pivotfile("stage s:\n    outs: s.txt\n    run: echo > $@\n", "sub/Pivotfile")
    assert loaded.changed()
    assert loaded.reload().redefined == (StageId("sub", "s"),)


def test_with_all_a_new_pivotfile_is_reloaded(project: Project) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project, all_pipelines=True)
    assert not loaded.changed()
    project.pivotfile("stage s:\n    outs: s.txt\n    run: touch $@\n", "new/Pivotfile")
    assert loaded.changed()
    assert loaded.reload().added == (StageId("new", "s"),)
    assert not loaded.changed()


def test_with_all_a_new_broken_pivotfile_is_not_reloaded_until_it_changes(project: Project) -> None:
    project.pivotfile(CHAIN)
    loaded = holder(project, all_pipelines=True)
    project.pivotfile("stage s:\n    oots: s.txt\n", "new/Pivotfile")
    assert isinstance(loaded.reload().error, PivotfileError)
    assert not loaded.changed()
    project.pivotfile("stage s:\n    outs: s.txt\n    run: touch $@\n", "new/Pivotfile")
    assert loaded.changed()
    assert loaded.reload().added == (StageId("new", "s"),)


def test_the_first_load_raises(project: Project) -> None:
    project.pivotfile("stage a:\n    oots: a.txt\n")
    loaded = LoadedProject(LoadOptions(project.root), print)
    with pytest.raises(PivotfileError):
        loaded.current()
    with pytest.raises(PivotfileError):
        loaded.reload()
    project.pivotfile(CHAIN)
    assert list(loaded.current()[1].stages) == [StageId("", "a"), StageId("", "b")]
