"""Graph errors and `py:` stages end to end: `build`, `check` and `status` report
them located, compiler-style (PATH:LINE:COL, the source line, a caret), and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Project, Result

HEAD = re.compile(r"(\S+):(\d+):(\d+): (error|warning|note): (.*)")

Located = tuple[str, int, int, str, str]


def located(r: Result, cwd: Path) -> list[Located]:
    """Every located line of stderr as (path, line, col, severity, message),
    checking that each quotes its source line (read from the file it names) with
    a caret under the column."""
    lines = r.err.splitlines()
    found: list[Located] = []
    for i, text in enumerate(lines):
        m = HEAD.fullmatch(text)
        if m is None:
            continue
        path, line, col = m.group(1), int(m.group(2)), int(m.group(3))
        source = (cwd / path).read_text().split("\n")[line - 1]
        assert lines[i + 1] == "    " + source, r.err
        assert lines[i + 2] == "    " + " " * (col - 1) + "^", r.err
        found.append((path, line, col, m.group(4), m.group(5)))
    return found


def failed_located(r: Result, cwd: Path) -> list[Located]:
    assert r.code == 2, r
    assert "Traceback" not in r.err
    assert r.out == ""
    assert r.err.splitlines()[-1].startswith("pivotbuild: "), r.err
    return located(r, cwd)


COMMANDS = [pytest.param((), id="build"), pytest.param(("check",), id="check"), pytest.param(("status",), id="status")]


@pytest.mark.parametrize("command", COMMANDS)
def test_two_stages_of_two_pipelines_writing_one_path(project: Project, command: tuple[str, ...]) -> None:
    project.pivotfile("include sub/\nstage a:\n    outs: done.txt sub/x.txt\n    run: touch $@\n")
    project.write("sub/Pivotfile", "stage b:\n    outs: x.txt\n    run: touch $@\n")
    r = project.run(*command)
    assert failed_located(r, project.root) == [
        ("sub/Pivotfile", 2, 11, "error", "two stages write 'sub/x.txt': a and sub:b; give each stage its own outputs"),
        ("Pivotfile", 3, 20, "note", "a writes 'sub/x.txt' here"),
    ]
    assert r.err.splitlines()[-1] == "pivotbuild: 1 error in sub/Pivotfile; fix the Pivotfile and run again"
    assert not (project.root / "done.txt").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_inside_another_stages_output_directory(project: Project, command: tuple[str, ...]) -> None:
    project.pivotfile(
        """
        stage plots:
            outs: reports/plots/
            run: mkdir -p $@
        stage summary:
            outs: reports/plots/summary.png
            run: touch $@
        """
    )
    found = failed_located(project.run(*command), project.root)
    assert [f[:4] for f in found] == [("Pivotfile", 5, 11, "error"), ("Pivotfile", 2, 11, "note")]
    assert found[0][4].startswith(
        "output 'reports/plots/summary.png' of summary is inside output directory 'reports/plots/' of plots"
    )


CYCLE = """
stage a:
    deps: y.txt
    outs: x.txt
    run: touch $@
stage b:
    deps: x.txt
    outs: y.txt
    run: touch $@
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_a_cycle_is_printed_and_each_stage_in_it_located(project: Project, command: tuple[str, ...]) -> None:
    project.pivotfile(CYCLE)
    found = failed_located(project.run(*command), project.root)
    assert [f[:4] for f in found] == [
        ("Pivotfile", 1, 7, "error"),  # stage a
        ("Pivotfile", 6, 11, "note"),  # b's deps: x.txt
        ("Pivotfile", 2, 11, "note"),  # a's deps: y.txt
    ]
    assert found[0][4].startswith("dependency cycle: a -> b -> a")
    assert [f[4] for f in found[1:]] == ["b reads 'x.txt', written by a", "a reads 'y.txt', written by b"]


OUTPUT_ERRORS = """
stage c:
    matrix: k=1 2
    outs: shared.txt
    run: touch $@
stage d:
    outs: out/
    run: mkdir -p $@
stage e:
    outs: out/e.txt
    run: touch $@
"""

CYCLE_PQ = """
stage p:
    deps: q.txt
    outs: p.txt
    run: touch $@
stage q:
    deps: p.txt
    outs: q.txt
    run: touch $@
"""


def test_every_graph_error_is_reported_at_once(project: Project) -> None:
    project.pivotfile(OUTPUT_ERRORS + CYCLE)
    found = failed_located(project.run(), project.root)
    # the outputs first, all of them: a cycle may come of them
    assert [(line, severity) for _, line, _, severity, _ in found] == [(3, "error"), (9, "error"), (6, "note")]
    assert "two stages write 'shared.txt': c@1 and c@2; put ${k} in the path" in found[0][4]
    project.pivotfile(CYCLE + CYCLE_PQ)
    r = project.run()
    found = failed_located(r, project.root)
    assert [(f[1], f[4].split(" (")[0]) for f in found if f[3] == "error"] == [
        (1, "dependency cycle: a -> b -> a"),
        (10, "dependency cycle: p -> q -> p"),
    ]
    assert r.err.splitlines()[-1] == "pivotbuild: 2 errors in Pivotfile; fix the Pivotfile and run again"


def test_check_all_locates_an_error_in_a_pipeline_that_is_not_included(project: Project) -> None:
    project.pivotfile("stage top:\n    run: echo\n")
    project.write("sub/Pivotfile", CYCLE.lstrip("\n"))
    assert project.run("check").code == 0
    r = project.run("check", "--all")
    assert [f[:4] for f in failed_located(r, project.root)] == [
        ("sub/Pivotfile", 1, 7, "error"),
        ("sub/Pivotfile", 6, 11, "note"),
        ("sub/Pivotfile", 2, 11, "note"),
    ]
    # from inside another pipeline, the file is named from there
    inner = project.root / "top"
    inner.mkdir()
    (inner / "Pivotfile").write_text("stage t:\n    run: echo\n")
    r = project.run("check", "--all", cwd=inner)
    assert [f[0] for f in failed_located(r, inner)] == ["../sub/Pivotfile"] * 3


MISSING = """
stage a:
    deps: in.txt
    outs: a.txt
    run: cp in.txt a.txt
"""


def test_a_missing_dep_is_located(project: Project) -> None:
    project.pivotfile(MISSING)
    r = project.run()
    assert failed_located(r, project.root) == [
        ("Pivotfile", 2, 11, "error", "'in.txt' does not exist and no stage writes it (needed by a)")
    ]
    assert r.err.splitlines()[-1] == "pivotbuild: 1 error in Pivotfile; create the missing files or fix the deps"


def test_a_missing_dep_in_an_included_pipeline_points_at_its_pivotfile(project: Project) -> None:
    project.pivotfile("include sub/\nstage top:\n    deps: sub/a.txt\n    run: cat sub/a.txt\n")
    project.write("sub/Pivotfile", MISSING)
    found = failed_located(project.run(), project.root)
    assert found == [
        ("sub/Pivotfile", 2, 11, "error", "'sub/in.txt' does not exist and no stage writes it (needed by sub:a)")
    ]


def test_check_warns_located_and_status_reports_a_missing_dep(project: Project) -> None:
    project.pivotfile(MISSING)
    r = project.run("check")
    assert r.code == 0, r
    assert located(r, project.root) == [
        ("Pivotfile", 2, 11, "warning", "'in.txt' does not exist and no stage writes it (needed by a)")
    ]
    status = project.run("status")
    assert status.code == 0, status


PY = """
stage prepare:
    outs: data.txt
    run: touch $@
stage train:
    matrix: model=small large
    deps: data.txt
    outs: model-${model}.pkl
    py: tasks.train:main
"""


def test_check_and_the_build_locate_a_py_stage_whose_module_is_missing(project: Project) -> None:
    project.pivotfile(PY)
    missing = (
        f"module 'tasks.train' not found under {project.root} (looked for tasks/train.py and"
        " tasks/train/__init__.py); create it or fix 'py: tasks.train:main'"
    )
    expected = [("Pivotfile", 8, 9, "error", missing)]  # once for both variants of the matrix
    check = project.run("check")
    assert failed_located(check, project.root) == expected
    build = project.run()
    assert failed_located(build, project.root) == expected
    assert check.err == build.err
    assert not (project.root / "data.txt").exists()  # refused before anything ran
    again = project.run("train")  # from the compiled plan (see test_plan_cache.py)
    assert again.err == build.err
    alone = project.run("run", "train@small")  # without its dependencies: refused all the same
    assert alone.err == build.err
    # a `run:` stage of the same project can still be built
    assert project.run("prepare").code == 0
    project.write("tasks/train.py", "def main(ctx):\n    open(ctx.outs[0], 'w').write(ctx.matrix['model'])\n")
    assert project.run("check").code == 0
    assert project.run().code == 0
    assert (project.root / "model-large.pkl").read_text() == "large"
