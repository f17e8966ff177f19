"""Which paths a build reads (build/watchset.py, through `LoadedProject.reads`):
what watch mode subscribes to, in real temporary projects."""

from __future__ import annotations

import pytest
from conftest import Project

from pivotbuild.build.session import LoadedProject
from pivotbuild.build.watchset import WatchSet
from pivotbuild.errors import TargetError
from pivotbuild.project import LoadOptions

CHAIN = """
stage a:
    deps: in.txt
    outs: build/a.txt
    run: cp $< $@

stage b:
    deps: build/a.txt
    outs: b.txt
    run: cp $< $@

stage c:
    deps: other.txt
    outs: c.txt
    run: cp $< $@
"""


def reads(p: Project, *targets: str, all_pipelines: bool = False) -> WatchSet:
    for name in ("in.txt", "other.txt"):
        if not (p.root / name).exists():
            p.write(name, "x\n")
    return LoadedProject(LoadOptions(p.root, all_pipelines=all_pipelines), print).reads(targets)


def at(p: Project, *rels: str) -> set[str]:
    return {str(p.root / rel) for rel in rels}


def test_a_chain_reads_its_sources_and_the_intermediate_files(project: Project) -> None:
    project.pivotfile(CHAIN)
    watched = reads(project, "b")
    assert watched.deps == at(project, "in.txt", "build/a.txt")
    assert watched.sources >= at(project, "Pivotfile")
    assert watched.roots() == (str(project.root),)
    assert watched.matches(str(project.root / "in.txt"))
    assert watched.matches(str(project.root / "build/a.txt"))  # a hand edit of the intermediate file
    assert watched.matches(str(project.root / "build"))  # its directory renamed
    assert not watched.matches(str(project.root / "b.txt"))  # the target's own output
    assert not watched.matches(str(project.root / "other.txt"))  # another stage's dep
    assert not watched.matches(str(project.root / ".pivot/Pivotfile.lock"))
    assert watched.is_source(str(project.root / "Pivotfile"))
    assert not watched.is_source(str(project.root / "in.txt"))


def test_no_targets_reads_what_the_default_targets_read(project: Project) -> None:
    project.pivotfile("default c\n" + CHAIN)
    assert reads(project).deps == at(project, "other.txt")


def test_an_unknown_target_is_an_error(project: Project) -> None:
    project.pivotfile(CHAIN)
    with pytest.raises(TargetError):
        reads(project, "nope")


def test_a_glob_dep_is_watched_by_its_directory_and_pattern(project: Project) -> None:
    project.pivotfile("stage g:\n    deps: data/**/*.csv\n    outs: g.txt\n    run: cat $^ > $@\n")
    watched = reads(project, "g")
    [glob] = watched.globs
    assert (glob.base, glob.pattern) == (str(project.root / "data"), "data/**/*.csv")
    assert watched.deps == set()
    assert watched.matches(str(project.root / "data/new.csv"))  # a new match
    assert watched.matches(str(project.root / "data/deep/er/new.csv"))
    assert watched.matches(str(project.root / "data/deep"))  # a directory moved in or out
    assert not watched.matches(str(project.write("data/new.txt", "x\n")))
    assert not watched.matches(str(project.root / "data/.new.csv"))  # the glob skips hidden files
    assert not watched.matches(str(project.root / "elsewhere/new.csv"))
    assert watched.roots() == (str(project.root),)


def test_a_directory_dep_is_watched_throughout(project: Project) -> None:
    project.write("raw/one/f.txt", "x\n")
    project.pivotfile("stage d:\n    deps: raw/\n    outs: d.txt\n    run: ls -R $< > $@\n")
    watched = reads(project, "d")
    assert watched.matches(str(project.root / "raw/one/f.txt"))
    assert watched.matches(str(project.root / "raw/two"))
    assert not watched.matches(str(project.root / "rawer"))


def test_an_included_pipeline_and_its_deps_are_read(project: Project) -> None:
    project.pivotfile("include sub/\n" + CHAIN)
    project.pivotfile("stage s:\n    deps: s.in\n    outs: s.txt\n    run: cp $< $@\n", "sub/Pivotfile")
    project.write("sub/s.in", "x\n")
    watched = reads(project, "sub:s")
    assert watched.deps == at(project, "sub/s.in")
    assert watched.sources >= at(project, "Pivotfile", "sub/Pivotfile")
    assert watched.is_source(str(project.root / "sub/Pivotfile"))


def test_params_files_are_sources(project: Project) -> None:
    project.write("params.toml", "[train]\nepochs = 3\n")
    project.pivotfile(CHAIN + "\nstage train:\n    params: train.epochs\n    outs: m.txt\n    run: echo > $@\n")
    watched = reads(project, "train")
    assert watched.is_source(str(project.root / "params.toml"))
    assert watched.matches(str(project.root / "params.toml"))


def test_an_absent_dep_directory_is_watched_from_where_it_would_appear(project: Project) -> None:
    outside = project.root.parent / "shared"
    project.pivotfile(f"stage x:\n    deps: {outside}/later/in.txt\n    outs: x.txt\n    run: cp $< $@\n")
    project.write(f"../{outside.name}/.keep", "")
    loaded = LoadedProject(LoadOptions(project.root), print)
    watched = loaded.reads(["x"])
    assert watched.deps == {str(outside / "later/in.txt")}
    assert watched.roots() == (str(project.root), str(outside))


def test_with_all_a_new_pivotfile_anywhere_is_a_source(project: Project) -> None:
    project.pivotfile(CHAIN)
    watched = reads(project, "c", all_pipelines=True)
    assert watched.pivotfile_trees == (str(project.root),)
    assert watched.is_source(str(project.root / "new/deep/Pivotfile"))
    assert watched.matches(str(project.root / "new/deep/Pivotfile"))
    assert not watched.is_source(str(project.root / ".hidden/Pivotfile"))  # --all skips hidden directories
    assert not watched.is_source(str(project.root / "new/deep/Pivotfile.lock"))


def test_without_all_a_new_pivotfile_is_not_a_source(project: Project) -> None:
    project.pivotfile(CHAIN)
    assert not reads(project, "c").is_source(str(project.root / "new/Pivotfile"))


def test_a_project_restored_from_its_compiled_plan_reads_the_same(project: Project) -> None:
    project.write("params.toml", "[train]\nepochs = 3\n")
    project.pivotfile(CHAIN + "\nstage train:\n    params: train.epochs\n    deps: data/*.csv\n    run: true\n")
    compiled = reads(project, "b", "train")
    restored = reads(project, "b", "train")  # the plan written by the first load is fresh
    assert restored == compiled


def test_state_under_a_directory_dep_is_never_a_change(project: Project) -> None:
    project.write("sub/in.txt", "x\n")
    project.pivotfile("stage d:\n    deps: sub/\n    outs: d.txt\n    run: ls $< > $@\n")
    watched = reads(project, "d")
    assert watched.matches(str(project.root / "sub/in.txt"))
    assert not watched.matches(str(project.root / "sub/.pivot/Pivotfile.lock"))
